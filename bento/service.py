"""The mixllm router over HTTP (BentoML 1.4): route, feedback, readiness, metrics, admin reload, pass-through.

Start it with ``mixllm serve``. This module only adapts `mixllm.serving.engine.ServingEngine` to HTTP: typed
parameters in, the engine's decisions and feedback outcomes out, its `RequestRejected` errors as 4xx/5xx bodies
that name the field. Decisions, records, online learning and replay all live in the engine.

One worker process on purpose: the router learns online from feedback, so one in-memory router must see every
request; concurrency comes from micro-batching the encoder, not from more processes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from mixllm.serving.engine import Routed, ServingEngine
from mixllm.serving.holder import LocalDirSource, RegistrySource
from mixllm.serving.outbox import Outbox
from mixllm.serving.schemas import FeedbackRequest, RequestRejected, conversation_text
from mixllm.serving.settings import BUNDLED_ROUTER_DIRNAME, ServingSettings
from mixllm.serving.shadow_worker import ShadowProcess, challenger_source
from mixllm.telemetry import go_offline

from .guards import ApiGuardMiddleware, request_header
from .http_models import (AllowedModels, Budget, FeedbackResult, Messages, ModelName, NonNegative, Probability,
                          Prompt, QueryId, ReloadResult, RouteBatchResult, RouteResult, SessionId, StreamOptions,
                          Tokens, Wtp, as_openai_error, http_error, openai_error, rejected)
from .metrics import ServiceMetrics
from .observability import ReadyzMiddleware, request_observability
from .passthrough import PassThrough
from .settings import HttpSettings

log = logging.getLogger("mixllm.service")
__all__ = ["RouterService", "request_observability"]


@bentoml.service(name="mixllm-router", workers=1, traffic={"timeout": 300},
                 http={"host": "127.0.0.1", "port": 3000},
                 **request_observability(HttpSettings().trace_requests))
class RouterService:
    """Routes each LLM request to the model with the best predicted quality per dollar, and learns from feedback."""

    def __init__(self) -> None:
        go_offline()
        from mixllm.config import get_settings

        self.settings = get_settings()
        self.cfg, self.http = ServingSettings(), HttpSettings()
        self.metrics = ServiceMetrics()
        spool = self.cfg.spool_path or self.settings.ensure_home() / "service-outbox.db"
        outbox = Outbox(spool, self._open_store, self.cfg.forward_interval_seconds, self.cfg.forward_batch)
        outbox.start(store_url=self.settings.store_url if self.cfg.forwarder == "process" else None)
        self.engine = ServingEngine(self._source(), self.cfg, outbox, self._open_store, self.settings.max_prompt_chars,
                                    self.settings.default_willingness_to_pay, self.metrics.batch_size.observe,
                                    self._on_swap,  # the canary arm's source; a missing alias: champion serves all
                                    challenger_source(self.cfg, self.settings) if self.cfg.canary_share > 0 else None)
        self.engine.start()
        self.shadow: ShadowProcess | None = None
        if self.cfg.shadow_sample > 0:  # the challenger decides sampled requests in its own low-priority process
            self.shadow = ShadowProcess(spool, self.settings.store_url)
            self.shadow.start()
        endpoints = None
        if self.settings.catalogue_path is not None:  # a bad deployment catalogue fails the start, not a request
            from mixllm.catalogue import load_catalogue
            endpoints = load_catalogue(self.settings.catalogue_path)
        self.passthrough = PassThrough(self.engine, self.metrics, endpoints, self.http.upstream_timeout_seconds)

    def _source(self) -> Any:
        if self.cfg.router_dir is not None:
            return LocalDirSource(self.cfg.router_dir)
        bundled = Path(__file__).resolve().parents[1] / BUNDLED_ROUTER_DIRNAME
        if bundled.is_dir():  # a Bento built by the pipeline carries its champion: serve exactly that version
            return LocalDirSource(bundled)
        from mixllm.registry import Registry

        return RegistrySource(Registry(self.settings), self.cfg.router_alias)

    def _open_store(self) -> Any:
        from mixllm.store import Store

        return Store(self.settings.store_url)

    def _on_swap(self, router: Any, ref: str | None) -> None:
        self.metrics.reloads.inc()
        self.metrics.set_router(str(router.version), ref)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """Stop polling, finish queued routes, deliver the outbox to the store (what is left waits in the spool)."""
        await self.passthrough.aclose()
        if self.shadow is not None:
            await asyncio.to_thread(self.shadow.stop)
        log.info("service stopped; %d events left in the outbox for the next start",
                 await asyncio.to_thread(self.engine.close))

    def status(self) -> dict[str, Any]:
        return self.engine.status()

    def __metrics__(self, content: str) -> str:
        """Refresh the gauges; append our metrics only when BentoML's multi-process collector does not export them."""
        self.metrics.refresh(self.engine, shadow=self.cfg.shadow_sample > 0)
        return content if self.metrics.exported_by_bentoml() else content + self.metrics.render()

    # ------------------------------------------------------------------------------------ routing ------------
    async def _route(self, prompts: list[str], field: str, wtp: float | None, allowed: list[str] | None,
                     max_cost: float | None, session_id: str | None, endpoint: str) -> list[Routed] | JSONResponse:
        t0 = time.perf_counter()
        tenant = request_header(RouterService.context, self.cfg.tenant_header)
        try:
            requests = self.engine.requests(prompts, field, wtp, allowed, max_cost, session_id, tenant)
        except RequestRejected as e:
            if e.kind == "over_budget":
                self.metrics.route_requests.labels(endpoint, "over_budget").inc()
            return rejected(e)
        try:
            routed = await self.engine.route(requests)
        except RequestRejected as e:
            status = "store_error" if e.kind == "store_unavailable" else "unroutable"
            self.metrics.route_requests.labels(endpoint, status).inc()
            return rejected(e)
        for r in routed:
            self.metrics.decisions.labels(r.choice.model).inc()
            self.metrics.arms.labels(r.arm).inc()
            if r.choice.sticky:
                self.metrics.sticky.inc()
        self.metrics.route_requests.labels(endpoint, "ok").inc()
        self.metrics.route_latency.observe((time.perf_counter() - t0) / max(len(prompts), 1))
        return routed

    def _result(self, r: Routed) -> RouteResult:
        d, c = r.decision, r.choice
        return RouteResult(request_id=r.request.request_id, model=c.model, router_choice=c.router_choice,
                           sticky=c.sticky, session_id=r.request.session_id,
                           willingness_to_pay=r.request.willingness_to_pay, router_version=d.router_version,
                           source_version=r.source_ref, arm=r.arm, candidates=list(d.candidates))

    @bentoml.api(route="/route")
    async def route(self, prompt: Prompt | None = None, messages: Messages | None = None,
                    willingness_to_pay: Wtp | None = None, allowed_models: AllowedModels | None = None,
                    max_cost_usd: Budget | None = None, session_id: SessionId | None = None) -> RouteResult:
        """Choose the model for one query (`prompt`) or one conversation (`messages`, all turns count)."""
        if (prompt is None) == (messages is None):
            return http_error(400, "prompt", "send exactly one of `prompt` or `messages`", "missing")
        field = "prompt" if prompt is not None else "messages"
        text = prompt if prompt is not None else conversation_text(messages or [])
        out = await self._route([text], field, willingness_to_pay, allowed_models, max_cost_usd, session_id, "route")
        return out if isinstance(out, JSONResponse) else self._result(out[0])

    @bentoml.api(route="/route/batch")
    async def route_batch(self, prompts: list[Prompt], willingness_to_pay: Wtp | None = None,
                          allowed_models: AllowedModels | None = None,
                          max_cost_usd: Budget | None = None) -> RouteBatchResult:
        """Choose a model for each of many prompts (same willingness to pay and constraints), one decision each."""
        if not prompts or len(prompts) > self.http.max_batch_prompts:
            return http_error(400, "prompts", f"send 1 to {self.http.max_batch_prompts} prompts, got {len(prompts)}",
                              "too_long" if prompts else "too_short")
        out = await self._route(prompts, "prompts", willingness_to_pay, allowed_models, max_cost_usd, None,
                                "route_batch")
        return out if isinstance(out, JSONResponse) else RouteBatchResult(decisions=[self._result(r) for r in out])

    # ------------------------------------------------------------------------------------ pass-through -------
    @bentoml.api(route="/v1/chat/completions")
    async def chat_completions(self, messages: Messages, model: ModelName = "auto",
                               temperature: Annotated[float, Field(ge=0, le=2)] | None = None,
                               max_tokens: Tokens | None = None,
                               top_p: Annotated[float, Field(ge=0, le=1)] | None = None, stream: bool = False,
                               stream_options: StreamOptions | None = None,
                               willingness_to_pay: Wtp | None = None, allowed_models: AllowedModels | None = None,
                               max_cost_usd: Budget | None = None, session_id: SessionId | None = None) -> dict:
        """OpenAI-compatible chat: routes the conversation (``model: "auto"``; a catalogue name pins it), forwards
        it to the model's `base_url` (``stream: true``: its server-sent events, event by event), answers with the
        upstream body plus the routed model (``model``, ``mixllm``, header ``x-mixllm-model``; streamed: in the
        first chunk), and records the call's cost and latency for the nightly retrain. Errors read as OpenAI's."""
        router = self.engine.router
        if model != "auto":
            if router is not None and model not in router.models:
                return openai_error(400, f"unknown model {model!r}; use \"auto\" or one of {list(router.models)}",
                                    "unknown_model", param="model")
            allowed_models = [model]
        text = conversation_text(messages)
        routed = await self._route([text], "messages", willingness_to_pay, allowed_models, max_cost_usd, session_id,
                                   "chat")
        if isinstance(routed, JSONResponse):
            return as_openai_error(routed)
        params = {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p}
        return await self.passthrough.handle(routed[0], text, messages, params, stream,
                                             bool(stream_options and stream_options.include_usage))

    # ------------------------------------------------------------------------------------ feedback -----------
    @bentoml.api(route="/feedback")
    async def feedback(self, request_id: QueryId | None = None, query_id: QueryId | None = None,
                       model: ModelName | None = None, rating: Probability | None = None,
                       quality: Probability | None = None, cost_usd: NonNegative | None = None,
                       latency_ms: NonNegative | None = None, completion_tokens: Tokens | None = None,
                       source: QueryId = "api") -> FeedbackResult:
        """Record how a routed answer went; the live router learns from it (within the caps) and the nightly
        retrain gets it."""
        try:
            out = await self.engine.feedback(FeedbackRequest(
                request_id=request_id, query_id=query_id, model=model, rating=rating, quality=quality,
                cost_usd=cost_usd, latency_ms=latency_ms, completion_tokens=completion_tokens, source=source))
        except RequestRejected as e:
            return rejected(e)
        for kind in out.recorded:
            self.metrics.feedback.labels(kind).inc()
        if "log" in out.recorded:
            self.metrics.observe_cost(out.model, cost_usd, "feedback")
        if out.online != "none":
            self.metrics.online_updates.labels(out.online).inc()
        return FeedbackResult(query_id=out.query_id, model=out.model, recorded=out.recorded,
                              applied_online=out.applied_online, online_error=out.online_error, capped=out.capped,
                              router_version=out.router_version)

    # ------------------------------------------------------------------------------------ admin --------------
    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Load the current router of the configured alias now (needs ``Authorization: Bearer $MIXLLM_ADMIN_TOKEN``)."""
        token = self.http.admin_token.get_secret_value() if self.http.admin_token else ""
        given = ctx.request.headers.get("authorization", "")
        if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            ctx.response.status_code = 403 if not token else 401  # BentoML takes the status from ctx.response
            return http_error(ctx.response.status_code, "authorization", "admin endpoints are disabled: set "
                              "MIXLLM_ADMIN_TOKEN" if not token else "missing or wrong bearer token",
                              "forbidden" if not token else "unauthorized")
        previous = getattr(self.engine.router, "version", None)
        swapped = self.engine.holder.refresh(force=True)
        st = self.engine.holder.status()
        return ReloadResult(reloaded=swapped, previous_version=previous, router_version=st["router_version"],
                            source_version=st["source_version"], source_reachable=st["source_reachable"],
                            last_error=st["last_error"])


RouterService.add_asgi_middleware(ReadyzMiddleware)
RouterService.add_asgi_middleware(ApiGuardMiddleware)
