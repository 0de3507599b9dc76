"""Which router serves: a source (a local directory, a registry alias, or one router in hand) and the holder that
swaps routers atomically.

A poller follows the source; a new router is loaded *beside* the old one, prepared (online state replayed, warmed
up) and only then swapped in by one reference assignment, so in-flight requests finish on the router they started
with and no request meets a cold or forgetful router. If the source cannot be read, the loaded router keeps serving
and `status()` says so.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from pathlib import Path
from typing import Any

from mixllm.exceptions import ArtifactError, MixLLMError, RegistryError

log = logging.getLogger("mixllm.service")


class RouterSource:
    """Where routers come from: a version reference that is cheap to poll, and a loader for a reference."""

    description: str = ""
    tags: Mapping[str, str] = MappingProxyType({})  # facts about the current version (registry tags), if any

    def current_ref(self) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, ref: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class LocalDirSource(RouterSource):
    """A router directory on disk (quickstart); its reference changes when any file in it is rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"dir:{self.path}"

    def current_ref(self) -> str | None:
        if not self.path.is_dir():
            raise ArtifactError(f"router directory {self.path} does not exist; set MIXLLM_ROUTER_DIR to a saved router")
        stamps = sorted((str(p.relative_to(self.path)), p.stat().st_mtime_ns) for p in self.path.rglob("*")
                        if p.is_file())
        return hashlib.sha256(repr(stamps).encode()).hexdigest()[:12]

    def load(self, ref: str) -> Any:
        from mixllm.routers.registry import load_router

        return load_router(self.path)


class RegistrySource(RouterSource):
    """An alias of the MLflow registered model (``champion`` by default)."""

    def __init__(self, registry: Any, alias: str) -> None:
        self.registry, self.alias = registry, alias
        self.description = f"registry:{registry.name}@{alias}"

    def current_ref(self) -> str | None:
        """The alias's version, keeping its tags from the same call (the canary's `canary_cleared_at` raises the
        challenger's share without a second request per poll)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.registry.client.get_model_version_by_alias(self.registry.name, self.alias)
        except MlflowException:  # no such alias, nothing registered, or the registry does not answer
            self.tags = MappingProxyType({})
            return None
        self.tags = MappingProxyType(dict(mv.tags or {}))
        return str(mv.version)

    def load(self, ref: str) -> Any:
        return self.registry.load_router(ref)



class StaticSource(RouterSource):
    """One router already in memory (the CLI's `mixllm route`): never changes."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.description = f"static:{getattr(router, 'version', '?')}"

    def current_ref(self) -> str | None:
        return str(getattr(self.router, "version", "static"))

    def load(self, ref: str) -> Any:
        return self.router

class RouterHolder:
    """The router being served, swapped atomically; `lock` serialises routing and online updates on it."""

    def __init__(self, source: RouterSource, on_swap: Callable[[Any, str | None], None] | None = None,
                 prepare: Callable[[Any, str | None], None] | None = None) -> None:
        self.source = source
        self.router: Any = None
        self.ref: str | None = None
        self.lock = threading.Lock()
        self.source_ok = False
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.loaded_at: float | None = None
        self._on_swap, self._prepare = on_swap, prepare
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self, force: bool = False) -> bool:
        """Load the source's current router if it changed (or `force`); returns True when a new one was swapped in.

        Never raises for an unreachable source: the router already loaded keeps serving and `status()` reports it.
        """
        with self._reload_lock:
            self.last_check = time.time()
            try:
                ref = self.source.current_ref()
                if ref is None:
                    raise RegistryError(f"{self.source.description} does not resolve to a version (alias unset, "
                                        "or the registry is unreachable)")
                self.source_ok, self.last_error = True, None
                if ref == self.ref and self.router is not None and not force:
                    return False
                router = self.source.load(ref)  # load beside the old one: in-flight requests keep theirs
                if self._prepare is not None:  # e.g. replay its online state: done before it serves a request
                    self._prepare(router, ref)
            except Exception as e:  # noqa: BLE001 - an unreachable registry surfaces as any client error
                if not isinstance(e, (MixLLMError, OSError)):
                    log.exception("unexpected error while refreshing the router from %s", self.source.description)
                self.source_ok, self.last_error = False, f"{type(e).__name__}: {e}"
                log.warning("router source %s unavailable, keeping version %s: %s", self.source.description,
                            self.ref, e)
                return False
            self.router, self.ref, self.loaded_at = router, ref, time.time()
        log.info("serving router %s (%s %s)", getattr(router, "version", "?"), self.source.description, ref)
        if self._on_swap is not None:
            self._on_swap(router, ref)
        return True

    def start_polling(self, every_seconds: float) -> None:
        if every_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, args=(every_seconds,), name="router-poller", daemon=True)
        self._thread.start()

    def _poll(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh()
            except Exception:  # a bug in a loader must not kill the poller; the error is logged with traceback
                log.exception("router refresh failed")

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        router = self.router
        return {"ready": router is not None,
                "router_version": getattr(router, "version", None),
                "source": self.source.description,
                "source_version": self.ref,
                "source_reachable": self.source_ok,
                "last_error": self.last_error,
                "loaded_at": self.loaded_at,
                "last_check": self.last_check}

