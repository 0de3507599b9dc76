"""Records that cross a boundary, defined once: log rows, feedback, route requests/decisions.

The data contracts (GX suites in ``data_contracts/``) validate tables of these records in bulk; these pydantic models
type them one at a time (CLI, service, online updates). Column orders below are the canonical table layout.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOG_COLUMNS: tuple[str, ...] = (
    "query_id",
    "prompt",
    "model",
    "quality",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "task",
    "ts",
    "router_version",
    "propensity",
)
# Columns added after contract version 1: a row where they are null has the digest it had before they existed, so
# the snapshot digests of stores and files landed earlier do not change (mixllm.contracts' row digests skip them).
LOG_OPTIONAL_COLUMNS: tuple[str, ...] = ("router_version", "propensity")
FEEDBACK_COLUMNS: tuple[str, ...] = ("query_id", "model", "rating", "ts", "source")
# A file's columns beyond the contract's (a gateway's `tenant`, `user`, `metric`, ...): kept per row as one JSON
# object in this column, outside the contract and outside the row digest (mixllm.data.read_log).
EXTRA_COLUMN = "extra"

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
# The probability with which a policy chose an option: 0 is excluded (a logged choice had a chance to happen, and
# inverse-propensity weights divide by it).
Propensity = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class LogRecord(BaseModel):
    """One observation: a query answered by one model (the interaction-log contract, one row).

    `router_version` and `propensity` say which policy chose this model and with what probability (a served
    decision); both are None for rows no policy chose (a full-information benchmark row, where every model
    answered). Off-policy training and evaluation weight a decision by 1 / propensity.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    model: str = Field(min_length=1)
    quality: Probability | None = None
    cost_usd: NonNegative | None = None
    prompt_tokens: Annotated[int, Field(ge=0)] | None = None
    completion_tokens: Annotated[int, Field(ge=0)] | None = None
    latency_ms: NonNegative | None = None
    task: str | None = None
    ts: datetime = Field(default_factory=utc_now)
    router_version: str | None = Field(default=None, min_length=1)
    propensity: Propensity | None = None


class FeedbackRecord(BaseModel):
    """A rating of one model's answer to one query (thumbs up = 1.0, down = 0.0, or graded in between)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    rating: Probability
    ts: datetime = Field(default_factory=utc_now)
    source: str = Field(default="api", min_length=1)


class RouteConstraints(BaseModel):
    """Hard limits applied before scoring: which models may be chosen and the most a query may cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_models: tuple[str, ...] | None = None
    max_cost_usd: NonNegative | None = None


class CandidateScore(BaseModel):
    """Why a candidate scored what it did: every term of the MixLLM score, for the decision trace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    predicted_quality: float
    predicted_cost_usd: float
    predicted_completion_tokens: float | None = None
    cost_term: float
    exploration_bonus: float
    waiting_penalty: float
    score: float
    eligible: bool = True
    reason: str | None = None

    @model_validator(mode="after")
    def _reason_when_ineligible(self) -> "CandidateScore":
        if not self.eligible and not self.reason:
            raise ValueError("an ineligible candidate needs a reason")
        return self


class RouteDecision(BaseModel):
    """The router's answer for one query and one willingness-to-pay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_id: str | None = None
    model: str
    willingness_to_pay: float
    candidates: tuple[CandidateScore, ...]
    router_version: str
    propensity: Propensity = 1.0  # probability the policy had of choosing `model` (1.0 = greedy)
