"""Serving settings that are not about HTTP (env prefix ``MIXLLM_``), read when a service starts.

HTTP-only options (admin token, tracing, upstream timeout, batch request size) live in `bento/settings.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where the nightly pipeline puts the champion's artifact inside a built Bento (next to `bento/` and `mixllm/`).
BUNDLED_ROUTER_DIRNAME = "champion_router"
# How the service hands the store URL to its outbox forwarder process (not argv: the URL may hold a password).
FORWARDER_STORE_ENV = "MIXLLM_FORWARDER_STORE_URL"


class ServingSettings(BaseSettings):
    """Which router serves, batching, sessions, the outbox, and the limits on what feedback may do online."""

    model_config = SettingsConfigDict(env_prefix="MIXLLM_", extra="ignore")

    router_dir: Path | None = Field(default=None, description="Serve this local router directory (quickstart).")
    router_alias: str = Field(default="champion", min_length=1, description="Registry alias to serve and follow.")
    poll_seconds: float = Field(default=5.0, ge=0, description="Alias poll period; 0 disables polling.")
    sticky_margin: float = Field(default=0.05, ge=0, description="Score gain needed to switch a session's model.")
    session_ttl_seconds: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=100_000, gt=0)
    max_batch: int = Field(default=64, ge=1, description="Most prompts routed in one micro-batch.")
    spool_path: Path | None = Field(default=None, description="Outbox SQLite file (default: "
                                    "<home>/service-outbox.db).")
    forward_interval_seconds: float = Field(default=0.5, gt=0, description="Outbox -> store forwarding period.")
    forward_batch: int = Field(default=2000, ge=1)
    forwarder: Literal["process", "thread"] = Field(default="process", description="Where the outbox forwarder "
                                                    "runs: a child process keeps its CPU work off the routing "
                                                    "thread's GIL (see Outbox.start); a thread is one process less.")
    feedback_source_limit: int = Field(default=1000, ge=0, description="Most online updates one feedback `source` "
                                       "may make per window; the excess is stored for the nightly retrain only.")
    feedback_source_window_seconds: float = Field(default=3600.0, gt=0, description="Window of the source limit.")
    replay: bool = Field(default=True, description="On every router load, replay the feedback the store received "
                         "after the router's training snapshot before it serves (see mixllm.serving.replay).")
    replay_max_events: int = Field(default=200_000, ge=0, description="Most recent events a load replays.")
    replay_batch: int = Field(default=256, ge=1, description="Events per replay step (routing runs between steps).")
    # Shadow and canary (issue 15): a second router, the registry's `challenger` alias (or a local directory).
    challenger_alias: str = Field(default="challenger", min_length=1, description="Registry alias of the router "
                                  "that shadows and takes the canary share.")
    challenger_dir: Path | None = Field(default=None, description="Use this local router directory as the "
                                        "challenger instead of the registry alias (quickstart, tests).")
    shadow_sample: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of champion-routed requests the "
                                 "challenger also decides, off the response path (0 = no shadow process).")
    shadow_priority: Literal["idle", "nice"] = Field(default="idle", description="CPU priority of the shadow "
                                                     "process: SCHED_IDLE (runs only on idle CPU: never slows "
                                                     "/route, but starves behind any batch job on a shared "
                                                     "machine) or nice 19 (progresses beside batch jobs).")
    shadow_batch: int = Field(default=64, ge=1, description="Queued shadow requests decided per forward pass.")
    shadow_queue_max: int = Field(default=20_000, ge=1, description="Most shadow requests waiting; the oldest are "
                                  "dropped (and counted) past it, so a starved shadow never grows the spool.")
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of sessions (per session_id, else "
                                "per request) routed by the challenger (0 = no canary).")
    canary_cleared_share: float | None = Field(default=0.2, ge=0.0, le=1.0, description="Share once the canary "
                                               "flow has shown the challenger not worse at its exposure budget "
                                               "(tag canary_cleared_at on its version; mixllm.canary), when "
                                               "larger than canary_share: more traffic, an earlier verdict. "
                                               "None = keep canary_share.")
    daily_spend_target_usd: float | None = Field(default=None, gt=0, description="Hold this observed spend per UTC "
                                                 "day by moving the default willingness to pay (None = off; see "
                                                 "mixllm.serving.spend).")
    spend_wtp_min: float | None = Field(default=None, gt=0, description="Lowest willingness to pay the controller "
                                        "may set (None: the starting one / 100; mixllm.serving.spend.bounds).")
    spend_wtp_max: float | None = Field(default=None, gt=0, description="Highest willingness to pay it may set "
                                        "(None: the starting one x 100).")
    spend_gain: float = Field(default=0.5, gt=0, le=1, description="Damping of each step (1 = the full ratio).")
    spend_max_request_cost_usd: float = Field(default=5.0, gt=0, description="Most one request's observed cost "
                                              "counts toward the day's spend and its tenant's budget.")
    spend_interval_seconds: float = Field(default=60.0, gt=0, description="Seconds between controller steps.")
    tenant_header: str = Field(default="x-mixllm-tenant", min_length=1, description="Request header naming the API "
                               "key or tenant that budgets count against.")
    tenant_budgets: dict[str, float] = Field(default_factory=dict, description="Daily hard cap in USD per tenant "
                                             "(JSON, e.g. {\"team-a\": 50}); past it: 429 until 00:00 UTC.")
    default_tenant_budget_usd: float | None = Field(default=None, ge=0, description="Cap of tenants not listed "
                                                    "(and of requests without the header); None = no cap.")
    canary_salt: str = Field(default="mixllm-canary", min_length=1, description="Salt of the session hash that "
                             "assigns the canary arm (change it to draw new sessions).")

CHAMPION_ARM = "champion"  # which router decided a request (RouteResult.arm, the canary metrics)
CANARY_ARM = "challenger"
