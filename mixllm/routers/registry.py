"""The name -> router class registry and `load_router`, the one loader for every saved router.

RouteLLM's `ROUTER_CLS` pattern: the CLI (`mixllm train --router NAME`), the evaluation (`baselines=(NAME, ...)`)
and the artifact manifest (`router_class`) all name a router by its registry key, and nothing branches on names.
The pipeline, the evaluation, the registry and the service load artifacts through `load_router(dir)`, so what was
evaluated is what is served, whatever the router class. A user's own `Router` subclass joins with `register`.
"""

from __future__ import annotations

from pathlib import Path

from mixllm.exceptions import ArtifactError, ConfigError
from mixllm.router import MixLLMRouter, PlainMixLLMRouter, TaggedMixLLMRouter
from mixllm.routers.base import Router, read_manifest
from mixllm.routers.baselines import (KNNRouter, LGBMRouter, MLPRouter, OracleRouter, RandomRouter,
                                      SingleModelRouter, TaskPriorRouter, TfidfLGBMRouter)

ROUTERS: dict[str, type[Router]] = {cls.name: cls for cls in (
    MixLLMRouter, PlainMixLLMRouter, SingleModelRouter, RandomRouter, OracleRouter, TaskPriorRouter, KNNRouter,
    LGBMRouter, TfidfLGBMRouter, MLPRouter, TaggedMixLLMRouter)}
DEFAULT_ROUTER = MixLLMRouter.name  # artifacts saved before the registry existed name no class: they are MixLLM's


def register(cls: type[Router]) -> type[Router]:
    """Add a router class under `cls.name` (usable as a decorator); a name already taken by another class is an
    error, so a typo cannot silently replace a built-in router."""
    if not (isinstance(cls, type) and issubclass(cls, Router)) or not cls.name:
        raise ConfigError(f"{cls!r} is not a Router subclass with a `name`; subclass mixllm.routers.base.Router")
    if ROUTERS.get(cls.name, cls) is not cls:
        raise ConfigError(f"router name {cls.name!r} is already registered by {ROUTERS[cls.name].__name__}")
    ROUTERS[cls.name] = cls
    return cls


def router_class(name: str) -> type[Router]:
    """The registered class of `name`; ConfigError naming every registered router otherwise."""
    try:
        return ROUTERS[name]
    except KeyError as e:
        raise ConfigError(f"unknown router {name!r}; registered routers: {', '.join(ROUTERS)}") from e


def load_router(directory: Path | str) -> Router:
    """Load any saved router: its manifest names the class (`router_class`), the class reads its parts."""
    manifest = read_manifest(directory)
    name = manifest.get("router_class", DEFAULT_ROUTER)
    if name not in ROUTERS:
        raise ArtifactError(f"{directory}: saved by router class {name!r}, which is not registered here "
                            f"({', '.join(ROUTERS)}); install or register it first")
    return ROUTERS[name].load(directory)
