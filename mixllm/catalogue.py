"""The LLM catalogue: the candidate models, their prices and latency profiles, as a typed, versioned YAML file.

Every other stage asks the catalogue about a model by name, so an unknown model fails in one place with one message
that says which entry to add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixllm.exceptions import CatalogueError, UnknownModelError

DEFAULT_CATALOGUE = "routerbench.yaml"
CHARS_PER_TOKEN = 4.0  # Token estimate when a log has no counts; reproduces RouterBench's recorded costs.


def estimate_tokens(text: str) -> int:
    """Estimate a token count from text length (no tokenizer download needed; ~4 chars/token for English)."""
    return max(1, int(round(len(text) / CHARS_PER_TOKEN))) if text else 0


class LatencyProfile(BaseModel):
    """How long one call takes and how many run at once before requests queue (drives waiting time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float = Field(ge=0, description="Time to first token.")
    tokens_per_second: float = Field(gt=0, description="Decode speed.")
    concurrency: int = Field(default=4, ge=1, description="Calls served in parallel before queueing.")

    def service_time_ms(self, completion_tokens: float) -> float:
        return self.ttft_ms + 1000.0 * max(completion_tokens, 0.0) / self.tokens_per_second


class LLMSpec(BaseModel):
    """One candidate LLM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    input_price_per_token: float = Field(ge=0)
    output_price_per_token: float = Field(ge=0)
    latency: LatencyProfile = LatencyProfile(ttft_ms=500, tokens_per_second=40)
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint for pass-through.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")

    def cost_usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        return prompt_tokens * self.input_price_per_token + completion_tokens * self.output_price_per_token


class Catalogue(BaseModel):
    """The versioned list of candidate LLMs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    llms: tuple[LLMSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "Catalogue":
        names = [m.name for m in self.llms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate LLM names in catalogue: {dupes}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.llms)

    def get(self, name: str) -> LLMSpec:
        for spec in self.llms:
            if spec.name == name:
                return spec
        raise UnknownModelError(
            f"model {name!r} is not in LLM catalogue {self.version!r}; add an entry "
            f"`- name: {name}` with input_price_per_token and output_price_per_token to the catalogue YAML "
            f"(known: {', '.join(self.names)})"
        )

    def check_known(self, names: Iterable[str]) -> None:
        """Raise `UnknownModelError` naming every unknown model at once."""
        unknown = sorted({n for n in names if n not in self.names})
        if unknown:
            raise UnknownModelError(
                f"models {unknown} are not in LLM catalogue {self.version!r}; add an entry per model "
                f"(`- name: ...` with input_price_per_token and output_price_per_token) to the catalogue YAML"
            )

    def with_llm(self, spec: LLMSpec) -> "Catalogue":
        return Catalogue(version=self.version, llms=(*[m for m in self.llms if m.name != spec.name], spec))

    def without_llm(self, name: str) -> "Catalogue":
        self.get(name)
        return Catalogue(version=self.version, llms=tuple(m for m in self.llms if m.name != name))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def digest(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


BUNDLED_CATALOGUES = ("routerbench", "llmrouter")


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Load a catalogue YAML; `None` loads the bundled RouterBench catalogue, a bundled name (`llmrouter`) its file.

    Bundled names resolve inside the installed package, so `--catalogue llmrouter` works from any folder.
    """
    try:
        if path is None or str(path) in BUNDLED_CATALOGUES:
            name = DEFAULT_CATALOGUE if path is None else f"{path}.yaml"
            text = resources.files("mixllm.catalogues").joinpath(name).read_text(encoding="utf-8")
            source = f"bundled {name}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            source = str(path)
        return Catalogue.model_validate(yaml.safe_load(text))
    except FileNotFoundError as e:
        raise CatalogueError(f"LLM catalogue not found: {path}") from e
    except (yaml.YAMLError, ValidationError, TypeError) as e:
        raise CatalogueError(f"invalid LLM catalogue {source}: {e}") from e
