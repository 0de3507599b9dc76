"""Typed configuration with embedded defaults, overridable by environment variables (prefix ``MIXLLM_``).

Nothing is read or created at import time: call `get_settings()` (or build `Settings(...)`) where the value is
needed. Paths default to a project data folder, ``.mixllm/`` under the current directory, so a fresh clone works
with no setup: SQLite store, SQLite-backed MLflow, local artifacts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mixllm.exceptions import ConfigError


class Settings(BaseSettings):
    """Where mixllm keeps its state and the defaults every stage shares."""

    model_config = SettingsConfigDict(env_prefix="MIXLLM_", extra="forbid", validate_default=True)

    home: Path = Field(default=Path(".mixllm"), description="Project data folder for embedded defaults.")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the interaction/feedback store.")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI (default: SQLite in home).")
    registry_uri: str | None = Field(default=None, description="MLflow registry URI (default: tracking_uri).")
    artifact_root: Path | None = Field(default=None, description="MLflow artifact root for the embedded default.")
    registered_model: str = Field(default="mixllm-router", min_length=1)
    experiment: str = Field(default="mixllm", min_length=1)
    max_prompt_chars: int = Field(default=32_000, gt=0, description="Longer prompts are rejected by the contract.")
    default_willingness_to_pay: float = Field(default=1000.0, gt=0, description="Quality points per dollar.")
    catalogue_path: Path | None = Field(default=None, description="LLM catalogue YAML (default: RouterBench's 11).")
    seed: int = 0

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _derive_defaults(self) -> "Settings":
        if self.store_url is None:
            self.store_url = f"sqlite:///{self.home / 'store.db'}"
        if self.tracking_uri is None:
            self.tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if self.registry_uri is None:
            self.registry_uri = self.tracking_uri
        if self.artifact_root is None:
            self.artifact_root = self.home / "mlartifacts"
        return self

    def ensure_home(self) -> Path:
        """Create the data folder on first use (never at import or construction)."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides, as a `ConfigError` when invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(f"invalid mixllm settings: {e}") from e
