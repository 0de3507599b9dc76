"""The requests the serving engine takes, defined once for the HTTP service and the CLI, and the error that says
which field of a request is wrong.

The HTTP adapter builds these from its typed parameters (BentoML keys a JSON body by parameter name); `mixllm
route` builds them from its JSON lines. Limits that depend on the live router (known models, prompt length) are
checked by the engine, which raises `RequestRejected` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mixllm.exceptions import MixLLMError
from mixllm.schemas import RouteConstraints

QueryId = Annotated[str, Field(min_length=1, max_length=200)]
Rejection = Literal["invalid", "too_long", "too_short", "unknown_model", "missing", "not_found", "unroutable",
                    "not_ready", "store_unavailable", "over_budget"]


class RequestRejected(MixLLMError):
    """A request the engine will not answer: `field` names the culprit, `kind` says why (the HTTP adapter maps it
    to a status code; the CLI prints the message)."""

    def __init__(self, message: str, field: str | None = None, kind: Rejection = "invalid") -> None:
        super().__init__(message)
        self.field, self.kind = field, kind


class RouteRequest(BaseModel):
    """Route one prompt (or one conversation, flattened by `conversation_text`) at one willingness to pay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    willingness_to_pay: float = Field(gt=0, allow_inf_nan=False)
    constraints: RouteConstraints | None = None
    request_id: str | None = Field(default=None, description="The decision's id (the service makes a fresh one; "
                                   "the CLI keeps the line's `id`, whatever it is).")
    session_id: QueryId | None = None
    tenant: str | None = Field(default=None, max_length=200, description="Whose budget the request counts against.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is blank")
        return v


class FeedbackRequest(BaseModel):
    """How a routed answer went: a rating and/or what was observed, for a `request_id` (or `query_id` + `model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: QueryId | None = None
    query_id: QueryId | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    rating: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    quality: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    cost_usd: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    latency_ms: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    completion_tokens: Annotated[int, Field(ge=0)] | None = None
    source: QueryId = "api"

    @model_validator(mode="after")
    def _complete(self) -> "FeedbackRequest":
        if self.request_id is None and (self.query_id is None or self.model is None):
            raise RequestRejected("send `request_id` (from /route), or `query_id` and `model`", "request_id",
                                  "missing")
        if self.rating is None and self.quality is None and self.cost_usd is None and self.latency_ms is None:
            raise RequestRejected("send at least one of `rating`, `quality`, `cost_usd`, `latency_ms`", "rating",
                                  "missing")
        return self

    @property
    def key(self) -> str:
        return self.request_id or self.query_id or ""

    @property
    def observed(self) -> bool:
        return any(v is not None for v in (self.quality, self.cost_usd, self.latency_ms, self.completion_tokens))


def conversation_text(messages: Sequence[Any]) -> str:
    """The text the router sees for a chat: every turn, oldest first, as ``role: content`` lines.

    Routing on the whole conversation (not only the last turn) is what makes a follow-up like "and in Python?" land
    on a model that suits the thread. A conversation without any text (only tool calls or images, which OpenAI
    allows) is routed on its turns' roles: a decision from the router's prior beats refusing a valid chat.
    """
    parts, roles = [], []
    for m in messages:
        role = getattr(m, "role", None) or (m.get("role") if isinstance(m, dict) else "user")
        content = getattr(m, "content", None) if not isinstance(m, dict) else m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if content:
            parts.append(f"{role}: {content}")
        roles.append(f"{role}:")
    return "\n".join(parts or roles)


def constraints_of(allowed_models: Sequence[str] | None, max_cost_usd: float | None) -> RouteConstraints | None:
    """The request's hard limits, or None when it sets none (the fast path of `decide`)."""
    if allowed_models is None and max_cost_usd is None:
        return None
    return RouteConstraints(allowed_models=tuple(allowed_models) if allowed_models else None,
                            max_cost_usd=max_cost_usd)
