"""HTTP request/response bodies of the router service that are not already in `mixllm.schemas`.

Request fields are the API methods' parameters (BentoML maps top-level JSON keys to them), so a body reads
``{"prompt": "...", "willingness_to_pay": 100}``. Responses reuse `CandidateScore` so the decision trace over HTTP is
the router's own trace.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from mixllm.schemas import CandidateScore
from mixllm.serving.schemas import RequestRejected

ModelName = Annotated[str, Field(min_length=1, max_length=200)]
Prompt = Annotated[str, Field(min_length=1, description="The user's query: not blank, at most "
                                                       "MIXLLM_MAX_PROMPT_CHARS characters.")]
# ge=1e-9 rather than gt=0: BentoML serves OpenAPI 3.0, where pydantic's numeric `exclusiveMinimum` is invalid.
Wtp = Annotated[float, Field(ge=1e-9, le=1e12, allow_inf_nan=False,
                             description="Quality points per dollar (> 0): higher pays more for quality.")]
Budget = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False, description="Most a query may cost (USD).")]
QueryId = Annotated[str, Field(min_length=1, max_length=200)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, le=1e12, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=0, le=100_000_000)]
SessionId = Annotated[str, Field(min_length=1, max_length=200, description="Keeps a conversation on one model.")]
AllowedModels = Annotated[list[ModelName], Field(min_length=1, max_length=1000,
                                                 description="Only these catalogue models may be chosen.")]


class ChatMessage(BaseModel):
    """One chat turn (OpenAI shape); `content` may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: Annotated[str, Field(min_length=1, max_length=50)]
    content: str | list[dict[str, Any]] | None = None


Messages = Annotated[list[ChatMessage], Field(min_length=1, max_length=1_000)]


class RouteResult(BaseModel):
    """One routing decision with the reason for it (every candidate's score terms)."""

    request_id: str = Field(description="Send it back with /feedback.")
    model: str = Field(description="The model to call.")
    router_choice: str = Field(description="The router's own first choice (differs when the session kept its model).")
    sticky: bool = Field(description="True when the session's earlier model was kept.")
    session_id: str | None = None
    willingness_to_pay: float
    router_version: str
    source_version: str | None = Field(default=None, description="Registry version (or local stamp) served.")
    arm: Literal["champion", "challenger"] = Field(default="champion", description="Which router decided: "
                                                   "\"challenger\" for a canary session.")
    candidates: list[CandidateScore]


class RouteBatchResult(BaseModel):
    decisions: list[RouteResult]


class FeedbackResult(BaseModel):
    query_id: str
    model: str
    recorded: list[Literal["feedback", "log"]] = Field(description="Which rows were appended to the store outbox.")
    applied_online: bool = Field(description="Whether the live router learned from it (router.update).")
    online_error: str | None = Field(default=None, description="Why it was not learned online.")
    capped: bool = Field(default=False, description="Not learned online because of a feedback cap (per request "
                         "id or per source); still stored for the nightly retrain.")
    router_version: str | None = None


class ReloadResult(BaseModel):
    reloaded: bool
    previous_version: str | None
    router_version: str | None
    source_version: str | None
    source_reachable: bool
    last_error: str | None = None


# Status of each `RequestRejected.kind` that is not a plain 400.
STATUS = {"not_found": 404, "unroutable": 422, "not_ready": 503, "store_unavailable": 503, "over_budget": 429}


def http_error(status: int, field: str | None, msg: str, kind: str = "value_error") -> JSONResponse:
    """A 4xx/5xx body shaped like BentoML's own validation errors: the field at fault is in ``detail[].loc``."""
    return JSONResponse({"error": msg, "detail": [{"loc": [field] if field else [], "msg": msg, "type": kind}]},
                        status_code=status)


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: `include_usage` adds a last chunk with the token counts."""

    include_usage: bool = False


def openai_error(status: int, message: str, code: str, type_: str | None = None,
                 param: str | None = None) -> JSONResponse:
    """An error body as OpenAI's API writes it, so its clients raise the matching exception with our message."""
    type_ = type_ or ("invalid_request_error" if status < 500 else "api_error")
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


def rejected(e: RequestRejected) -> JSONResponse:
    """The engine's refusal of a request as an HTTP error body."""
    return http_error(STATUS.get(e.kind, 400), e.field, str(e), e.kind)


def as_openai_error(resp: JSONResponse) -> JSONResponse:
    """One of our `http_error` bodies re-shaped as OpenAI's (for the pass-through, whose callers are its clients)."""
    import json

    body = json.loads(bytes(resp.body))
    detail = (body.get("detail") or [{}])[0]
    loc = detail.get("loc") or [None]
    return openai_error(resp.status_code, body.get("error") or detail.get("msg", ""), detail.get("type", "invalid"),
                        param=loc[0])
