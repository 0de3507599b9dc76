"""HTTP-only settings of the router service (env prefix ``MIXLLM_``); the rest is `mixllm.serving.settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HttpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIXLLM_", extra="ignore")

    admin_token: SecretStr | None = Field(default=None, description="Bearer token for /admin/*; unset = disabled.")
    max_batch_prompts: int = Field(default=256, ge=1, description="Most prompts in one /route/batch request.")
    upstream_timeout_seconds: float = Field(default=120.0, gt=0, description="Pass-through call timeout.")
    trace_requests: bool = Field(default=False, description="BentoML's OpenTelemetry span for the routing "
                                 "endpoints and its access-log line for every request (see bento/README.md).")
