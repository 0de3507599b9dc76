"""The mixllm router over HTTP (BentoML 1.4): route, feedback, readiness, metrics, admin reload, pass-through.

Start it with ``mixllm serve`` (or ``bentoml serve bento.service:RouterService`` from the repository root).
This module only adapts `mixllm` to HTTP: routing is `MixLLMRouter.route`, learning is `MixLLMRouter.update`, the
serving state (which router, batching, sessions, durable outbox) is `mixllm.service_state`.

One worker process on purpose: the router learns online from feedback, so one in-memory router must see every
request; concurrency comes from micro-batching the encoder, not from more processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import JSONResponse

from bento.http_models import (AllowedModels, Budget, FeedbackResult, Messages, ModelName, NonNegative, Probability,
                               Prompt, QueryId, ReloadResult, RouteBatchResult, RouteResult, SessionId, Tokens, Wtp)
from bento.metrics import ServiceMetrics
from mixllm.catalogue import estimate_tokens
from mixllm.exceptions import MixLLMError, RoutingError, StoreError
from mixllm.schemas import FeedbackRecord, LogRecord, RouteConstraints, RouteDecision, utc_now
from mixllm.service_state import (BUNDLED_ROUTER_DIRNAME, DecisionRef, LocalDirSource, MicroBatcher, Outbox,
                                  RegistrySource, RouterHolder, ServiceSettings, SessionTracker, StickyChoice,
                                  conversation_text, limit_blas_threads, settle_heap)
from mixllm.telemetry import go_offline

log = logging.getLogger("mixllm.service")


def http_error(status: int, field: str | None, msg: str, kind: str = "value_error") -> JSONResponse:
    """A 4xx/5xx body shaped like BentoML's own validation errors: the field at fault is in ``detail[].loc``."""
    return JSONResponse({"error": msg, "detail": [{"loc": [field] if field else [], "msg": msg, "type": kind}]},
                        status_code=status)


@dataclass(frozen=True)
class RouteJob:
    prompt: str
    willingness_to_pay: float
    constraints: RouteConstraints | None
    request_id: str
    session_id: str | None


def _rows(pred: Any, idxs: list[int]) -> Any:
    """The predictions of some prompts of a batch (same dataclass, rows selected)."""
    sel = np.asarray(idxs)
    return dataclasses.replace(pred, **{f.name: getattr(pred, f.name)[sel] for f in dataclasses.fields(pred)
                                        if isinstance(getattr(pred, f.name), np.ndarray)})


class ReadyzMiddleware:
    """Answers ``GET /readyz`` with JSON (router version, registry state) instead of BentoML's empty 200.

    503 until a router is loaded; once loaded it stays 200 even when the registry is unreachable (the service keeps
    serving what it has) and says so in ``source_reachable`` / ``last_error``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] in ("GET", "HEAD"):
            svc = bentoml.get_current_service()
            status = svc.status() if hasattr(svc, "status") else {"ready": False, "starting": True}
            await JSONResponse(status, status_code=200 if status["ready"] else 503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


ROUTING_PATHS = ("/route", "/route/batch")


def request_observability(trace_requests: bool) -> dict[str, Any]:
    """BentoML config for per-request tracing and access logs.

    Off by default (`MIXLLM_TRACE_REQUESTS=0`): the routing endpoints get no OpenTelemetry span and no request gets an
    access-log line. Both cost event-loop CPU on every /route call. Measured here with one client: 1.6-1.7 ms per
    request with both, 1.05-1.2 ms without the span, 1.45 ms without the log, 0.95-1.15 ms without either.
    Nothing is lost by default: each decision is already committed to the outbox under its `request_id`,
    BentoML's and our own Prometheus metrics still count every request, and the other endpoints keep their spans.
    """
    if trace_requests:
        return {}
    return {"tracing": {"excluded_urls": [f"{p}$" for p in ROUTING_PATHS]}, "logging": {"access": {"enabled": False}}}


@bentoml.service(name="mixllm-router", workers=1, traffic={"timeout": 300},
                 http={"host": "127.0.0.1", "port": 3000},
                 **request_observability(ServiceSettings().trace_requests))
class RouterService:
    """Routes each LLM request to the model with the best predicted quality per dollar, and learns from feedback."""

    def __init__(self) -> None:
        go_offline()
        limit_blas_threads()  # before any router code runs numpy: see limit_blas_threads
        from mixllm.config import get_settings

        self.settings = get_settings()
        self.cfg = ServiceSettings()
        self.metrics = ServiceMetrics()
        spool = self.cfg.spool_path or self.settings.ensure_home() / "service-outbox.db"
        self.outbox = Outbox(spool, self._open_store, self.cfg.forward_interval_seconds, self.cfg.forward_batch)
        self.outbox.start(store_url=self.settings.store_url if self.cfg.forwarder == "process" else None)
        self.sessions = SessionTracker(self.cfg.sticky_margin, self.cfg.session_ttl_seconds, self.cfg.max_sessions)
        # Every encoder forward pass runs on the batcher's thread (routing, warm-up, feedback): see MicroBatcher.call.
        self.batcher: MicroBatcher[RouteJob, tuple[RouteDecision, StickyChoice]] = MicroBatcher(
            self._route_batch, self.cfg.max_batch, name="router-batcher", on_batch=self.metrics.batch_size.observe)
        self.updater: MicroBatcher[tuple[Any, str | None], None] = MicroBatcher(
            self._update_batch, self.cfg.max_batch, name="router-updater")
        self.holder = RouterHolder(self._source(), on_swap=self._on_swap)
        self.holder.refresh()
        self.holder.start_polling(self.cfg.poll_seconds)
        self._http_client: Any = None
        self._endpoints: Any = None
        if self.settings.catalogue_path is not None:  # a bad deployment catalogue fails the start, not a request
            from mixllm.catalogue import load_catalogue

            self._endpoints = load_catalogue(self.settings.catalogue_path)

    # ------------------------------------------------------------------------------------ lifecycle ----------
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
        limit_blas_threads()  # again: loading a router can bring in another BLAS (scipy's, for the PCA)
        # First forward pass allocates buffers: pay it before traffic arrives, on the thread that will route.
        self.batcher.call(lambda: router.predict(["warm-up"])).result()
        settle_heap()  # the loaded router and libraries leave the garbage collector's scans (see settle_heap)
        self.metrics.reloads.inc()
        self.metrics.set_router(str(router.version), ref)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """Stop polling, finish queued routes, deliver the outbox to the store (what is left waits in the spool)."""
        self.holder.stop()
        if self._http_client is not None:
            await self._http_client.aclose()
        await asyncio.to_thread(self.batcher.close)
        await asyncio.to_thread(self.updater.close)
        left = await asyncio.to_thread(self.outbox.close)
        log.info("service stopped; %d events left in the outbox for the next start", left)

    def status(self) -> dict[str, Any]:
        status = self.holder.status()
        status["outbox_pending"] = self.outbox.pending()
        status["outbox_last_error"] = self.outbox.last_error
        status["sessions"] = len(self.sessions)
        return status

    def __metrics__(self, content: str) -> str:
        """Refresh the gauges; append our metrics only when BentoML's multi-process collector does not export them."""
        self.metrics.outbox_pending.set(self.outbox.pending())
        self.metrics.source_up.set(1 if self.holder.source_ok else 0)
        return content if self.metrics.exported_by_bentoml() else content + self.metrics.render()

    # ------------------------------------------------------------------------------------ routing ------------
    def _route_batch(self, jobs: list[RouteJob]) -> list[Any]:
        """Route a micro-batch: one `predict` (one encoder pass) for all prompts, one `decide` per (willingness,
        constraints) group, then one outbox commit before any caller gets its answer."""
        router = self.holder.router
        if router is None:
            return [RoutingError("no router is loaded yet; see /readyz")] * len(jobs)
        groups: dict[tuple[float, str], list[int]] = {}
        for i, job in enumerate(jobs):
            key = (job.willingness_to_pay, job.constraints.model_dump_json() if job.constraints else "")
            groups.setdefault(key, []).append(i)
        results: list[Any] = [None] * len(jobs)
        with self.holder.lock:
            try:
                pred = router.predict([j.prompt for j in jobs])
            except MixLLMError as e:
                return [e] * len(jobs)
            for idxs in groups.values():
                self._decide(router, pred, jobs, idxs, results)
        ok = [(jobs[i], r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        records = [LogRecord(query_id=j.request_id, prompt=j.prompt, model=c.model,
                             prompt_tokens=estimate_tokens(j.prompt), ts=utc_now()) for j, (_, c) in ok]
        refs = [DecisionRef(j.request_id, j.prompt, c.model, d.router_version, estimate_tokens(j.prompt))
                for j, (d, c) in ok]
        try:
            self.outbox.put(records, refs)  # the answer leaves only once the decision is durable
        except StoreError as e:
            return [e if not isinstance(r, BaseException) else r for r in results]
        return results

    def _decide(self, router: Any, pred: Any, jobs: list[RouteJob], idxs: list[int], results: list[Any]) -> None:
        first = jobs[idxs[0]]
        rows = pred if len(idxs) == len(jobs) else _rows(pred, idxs)
        try:
            decisions = router.decide(rows, first.willingness_to_pay, first.constraints,
                                      query_ids=[jobs[i].request_id for i in idxs])
        except MixLLMError as e:
            if len(idxs) == 1:
                results[idxs[0]] = e
                return
            for i in idxs:  # isolate the prompt that has no eligible model; the others still get answers
                self._decide(router, pred, jobs, [i], results)
            return
        for i, d in zip(idxs, decisions):
            results[i] = (d, self.sessions.choose(jobs[i].session_id, d))

    def _validate_route_args(self, prompts: list[str], field: str, allowed_models: list[str] | None,
                             max_cost_usd: float | None) -> JSONResponse | RouteConstraints | None:
        router = self.holder.router
        if router is None:
            return http_error(503, None, "no router is loaded yet; see /readyz", "not_ready")
        limit = self.settings.max_prompt_chars
        for p in prompts:
            if len(p) > limit:
                return http_error(400, field, f"prompt has {len(p)} characters, more than max_prompt_chars={limit}; "
                                  "shorten it", "string_too_long")
            if not p.strip():
                return http_error(400, field, "prompt is blank", "string_too_short")
        if allowed_models is not None:
            unknown = sorted(set(allowed_models) - set(router.models))
            if unknown:
                return http_error(400, "allowed_models", f"unknown models {unknown}; the router knows "
                                  f"{list(router.models)}", "unknown_model")
        if allowed_models is None and max_cost_usd is None:
            return None
        return RouteConstraints(allowed_models=tuple(allowed_models) if allowed_models else None,
                                max_cost_usd=max_cost_usd)

    async def _submit(self, prompts: list[str], wtp: float | None, constraints: RouteConstraints | None,
                      session_id: str | None, endpoint: str) -> list[RouteResult] | JSONResponse:
        t0 = time.perf_counter()
        wtp = wtp if wtp is not None else self.settings.default_willingness_to_pay
        jobs = [RouteJob(p, wtp, constraints, uuid.uuid4().hex, session_id) for p in prompts]
        futures = [asyncio.wrap_future(self.batcher.submit(j)) for j in jobs]
        try:
            answers = await asyncio.gather(*futures)
        except RoutingError as e:
            self.metrics.route_requests.labels(endpoint, "unroutable").inc()
            field = "max_cost_usd" if constraints and constraints.max_cost_usd is not None else "allowed_models"
            return http_error(503 if self.holder.router is None else 422, field, str(e), "unroutable")
        except StoreError as e:
            self.metrics.route_requests.labels(endpoint, "store_error").inc()
            return http_error(503, None, str(e), "store_unavailable")
        out = []
        for job, (d, choice) in zip(jobs, answers):
            self.metrics.decisions.labels(choice.model).inc()
            if choice.sticky:
                self.metrics.sticky.inc()
            out.append(RouteResult(request_id=job.request_id, model=choice.model, router_choice=choice.router_choice,
                                   sticky=choice.sticky, session_id=session_id, willingness_to_pay=wtp,
                                   router_version=d.router_version, source_version=self.holder.ref,
                                   candidates=list(d.candidates)))
        self.metrics.route_requests.labels(endpoint, "ok").inc()
        self.metrics.route_latency.observe((time.perf_counter() - t0) / max(len(prompts), 1))
        return out

    @bentoml.api(route="/route")
    async def route(self, prompt: Prompt | None = None, messages: Messages | None = None,
                    willingness_to_pay: Wtp | None = None, allowed_models: AllowedModels | None = None,
                    max_cost_usd: Budget | None = None, session_id: SessionId | None = None) -> RouteResult:
        """Choose the model for one query (`prompt`) or one conversation (`messages`, all turns count)."""
        if (prompt is None) == (messages is None):
            return http_error(400, "prompt", "send exactly one of `prompt` or `messages`", "missing")
        field = "prompt" if prompt is not None else "messages"
        text = prompt if prompt is not None else conversation_text(messages or [])
        checked = self._validate_route_args([text], field, allowed_models, max_cost_usd)
        if isinstance(checked, JSONResponse):
            return checked
        out = await self._submit([text], willingness_to_pay, checked, session_id, "route")
        return out if isinstance(out, JSONResponse) else out[0]

    @bentoml.api(route="/route/batch")
    async def route_batch(self, prompts: list[Prompt], willingness_to_pay: Wtp | None = None,
                          allowed_models: AllowedModels | None = None,
                          max_cost_usd: Budget | None = None) -> RouteBatchResult:
        """Choose a model for each of many prompts (same willingness to pay and constraints), one decision each."""
        if not prompts or len(prompts) > self.cfg.max_batch_prompts:
            return http_error(400, "prompts", f"send 1 to {self.cfg.max_batch_prompts} prompts, got {len(prompts)}",
                              "too_long" if prompts else "too_short")
        checked = self._validate_route_args(prompts, "prompts", allowed_models, max_cost_usd)
        if isinstance(checked, JSONResponse):
            return checked
        out = await self._submit(prompts, willingness_to_pay, checked, None, "route_batch")
        return out if isinstance(out, JSONResponse) else RouteBatchResult(decisions=out)

    # ------------------------------------------------------------------------------------ pass-through -------
    def _endpoint(self, model: str) -> Any:
        """The routed model's endpoint: from MIXLLM_CATALOGUE_PATH when set (deployment config, read at start),
        else from the catalogue of the router serving now (a newer champion may know more models)."""
        catalogue = self._endpoints if self._endpoints is not None else self.holder.router.catalogue
        return catalogue.get(model)

    @bentoml.api(route="/v1/chat/completions")
    async def chat_completions(self, messages: Messages, model: ModelName = "auto",
                               temperature: Annotated[float, Field(ge=0, le=2)] | None = None,
                               max_tokens: Tokens | None = None,
                               top_p: Annotated[float, Field(ge=0, le=1)] | None = None, stream: bool = False,
                               willingness_to_pay: Wtp | None = None, allowed_models: AllowedModels | None = None,
                               max_cost_usd: Budget | None = None, session_id: SessionId | None = None) -> dict:
        """OpenAI-compatible chat: routes the conversation, forwards it to the chosen model's `base_url`, answers
        with the upstream body plus the routed model (body ``model`` and ``mixllm``, header ``x-mixllm-model``),
        and records the call's cost and latency for the nightly retrain. ``model: "auto"`` lets the router choose;
        a catalogue model name pins it."""
        if stream:
            return http_error(400, "stream", "streaming is not supported by the pass-through; send stream=false",
                              "unsupported")
        if model != "auto":
            router = self.holder.router
            if router is not None and model not in router.models:
                return http_error(400, "model", f"unknown model {model!r}; use \"auto\" or one of "
                                  f"{list(router.models)}", "unknown_model")
            allowed_models = [model]
        text = conversation_text(messages)
        checked = self._validate_route_args([text], "messages", allowed_models, max_cost_usd)
        if isinstance(checked, JSONResponse):
            return checked
        routed = await self._submit([text], willingness_to_pay, checked, session_id, "chat")
        if isinstance(routed, JSONResponse):
            return routed
        decision = routed[0]
        try:
            spec = self._endpoint(decision.model)
        except MixLLMError as e:
            return http_error(503, "model", str(e), "no_endpoint")
        if not spec.base_url:
            return http_error(503, "model", f"model {decision.model!r} has no base_url in the LLM catalogue; add "
                              "one (and api_key_env) to pass requests through", "no_endpoint")
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                return http_error(503, "model", f"environment variable {spec.api_key_env} (API key of "
                                  f"{decision.model}) is not set in the service", "no_api_key")
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": decision.model, "messages": [m.model_dump(exclude_none=True) for m in messages],
                **{k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens), ("top_p", top_p))
                   if v is not None}}
        if self._http_client is None:
            import httpx

            self._http_client = httpx.AsyncClient(timeout=self.cfg.upstream_timeout_seconds)
        t0 = time.perf_counter()
        try:
            resp = await self._http_client.post(f"{spec.base_url.rstrip('/')}/chat/completions", json=body,
                                                headers=headers)
            data = resp.json() if resp.status_code < 300 else None
        except Exception as e:  # noqa: BLE001 - any transport or decoding failure of the upstream is a 502
            self.metrics.upstream.labels(decision.model, "error").inc()
            return http_error(502, "model", f"upstream {decision.model} at {spec.base_url} failed: "
                              f"{type(e).__name__}: {e}", "upstream_error")
        latency_ms = 1e3 * (time.perf_counter() - t0)
        if data is None or not isinstance(data, dict):
            self.metrics.upstream.labels(decision.model, "error").inc()
            return http_error(502, "model", f"upstream {decision.model} answered {resp.status_code}: "
                              f"{resp.text[:300]}", "upstream_error")
        self.metrics.upstream.labels(decision.model, "ok").inc()
        usage = data.get("usage") or {}
        answer = " ".join(str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or []
                          if isinstance(c, dict))
        pt = int(usage.get("prompt_tokens") or estimate_tokens(text))
        ct = int(usage.get("completion_tokens") or estimate_tokens(answer))
        cost = spec.cost_usd(pt, ct)
        record = LogRecord(query_id=decision.request_id, prompt=text, model=decision.model, cost_usd=cost,
                           prompt_tokens=pt, completion_tokens=ct, latency_ms=latency_ms, ts=utc_now())
        try:
            await asyncio.to_thread(self.outbox.put, [record])
        except StoreError as e:
            log.error("pass-through observation of %s not recorded: %s", decision.request_id, e)
        self.metrics.feedback.labels("log").inc()
        self.updater.submit((record, text))  # cost residual for the bandit; the caller does not wait for it
        data["model"] = decision.model
        data["mixllm"] = {"request_id": decision.request_id, "model": decision.model,
                          "router_version": decision.router_version, "cost_usd": cost, "latency_ms": latency_ms}
        return JSONResponse(data, headers={"x-mixllm-model": decision.model,
                                           "x-mixllm-request-id": decision.request_id})

    # ------------------------------------------------------------------------------------ feedback -----------
    @bentoml.api(route="/feedback")
    async def feedback(self, request_id: QueryId | None = None, query_id: QueryId | None = None,
                 model: ModelName | None = None, rating: Probability | None = None,
                 quality: Probability | None = None, cost_usd: NonNegative | None = None,
                 latency_ms: NonNegative | None = None, completion_tokens: Tokens | None = None,
                 source: QueryId = "api") -> FeedbackResult:
        """Record how a routed answer went; the live router learns from it and the nightly retrain gets it."""
        if request_id is None and (query_id is None or model is None):
            return http_error(400, "request_id", "send `request_id` (from /route), or `query_id` and `model`",
                              "missing")
        if rating is None and quality is None and cost_usd is None and latency_ms is None:
            return http_error(400, "rating", "send at least one of `rating`, `quality`, `cost_usd`, `latency_ms`",
                              "missing")
        qid = request_id or query_id or ""
        ref = self.outbox.decision(qid)
        if request_id is not None and ref is None:
            return http_error(404, "request_id", f"unknown request_id {request_id!r} (not routed by this service, "
                              "or older than the retention window)", "not_found")
        model = model or (ref.model if ref else None)
        router = self.holder.router
        if router is not None and model not in router.models:
            return http_error(400, "model", f"unknown model {model!r}; the router knows {list(router.models)}",
                              "unknown_model")
        records: list[Any] = []
        if rating is not None:
            records.append(FeedbackRecord(query_id=qid, model=model, rating=rating, source=source, ts=utc_now()))
        observed = any(v is not None for v in (quality, cost_usd, latency_ms, completion_tokens))
        if observed:
            if ref is None:
                return http_error(400, "query_id", f"no prompt is known for query {qid!r}, so quality/cost cannot be "
                                  "logged; send `rating` only, or route the query through /route first", "not_found")
            records.append(LogRecord(query_id=qid, prompt=ref.prompt, model=model, quality=quality,
                                     cost_usd=cost_usd, latency_ms=latency_ms, prompt_tokens=ref.prompt_tokens,
                                     completion_tokens=completion_tokens, ts=utc_now()))
        try:
            await asyncio.to_thread(self.outbox.put, records)  # durable before we answer
        except StoreError as e:
            return http_error(503, None, str(e), "store_unavailable")
        for r in records:
            self.metrics.feedback.labels("feedback" if isinstance(r, FeedbackRecord) else "log").inc()
        applied, err = await self._learn(records, ref)
        return FeedbackResult(query_id=qid, model=model, recorded=["feedback" if isinstance(r, FeedbackRecord)
                                                                   else "log" for r in records],
                              applied_online=applied, online_error=err,
                              router_version=str(router.version) if router is not None else None)

    async def _learn(self, records: list[Any], ref: DecisionRef | None) -> tuple[bool, str | None]:
        """Online update of the live router: an observed quality wins over a rating of the same answer."""
        learnable = [r for r in records if isinstance(r, FeedbackRecord) or r.quality is not None]
        if not learnable:
            return False, "no quality signal to learn from"
        try:
            await asyncio.wrap_future(self.updater.submit((learnable[-1], ref.prompt if ref else None)))
        except (MixLLMError, ValueError, KeyError) as e:
            self.metrics.online_updates.labels("error").inc()
            return False, f"{type(e).__name__}: {e}"
        self.metrics.online_updates.labels("ok").inc()
        return True, None

    def _update_batch(self, items: list[tuple[Any, str | None]]) -> list[Any]:
        """Fold a micro-batch of feedback into the live router with one `update_many` (one encoder pass, on the
        routing thread: see MicroBatcher.call)."""
        return self.batcher.call(lambda: self._apply_updates(items)).result()

    def _apply_updates(self, items: list[tuple[Any, str | None]]) -> list[Any]:
        router = self.holder.router
        if router is None:
            return [RoutingError("no router is loaded yet; see /readyz")] * len(items)
        with self.holder.lock:
            try:
                router.update_many([r for r, _ in items], [p for _, p in items])
                return [None] * len(items)
            except (MixLLMError, ValueError, KeyError):
                if len(items) == 1:
                    raise
            out: list[Any] = []
            for rec, prompt in items:  # isolate the event the router refused; the others are still learned
                try:
                    router.update(rec, prompt=prompt)
                    out.append(None)
                except (MixLLMError, ValueError, KeyError) as e:
                    out.append(e)
            return out

    # ------------------------------------------------------------------------------------ admin --------------
    @staticmethod
    def _refuse(ctx: bentoml.Context, status: int, msg: str, kind: str) -> JSONResponse:
        """An auth error from an API that takes `ctx`: BentoML then sets the status from `ctx.response`."""
        ctx.response.status_code = status
        return http_error(status, "authorization", msg, kind)

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Load the current router of the configured alias now (needs ``Authorization: Bearer $MIXLLM_ADMIN_TOKEN``)."""
        token = self.cfg.admin_token.get_secret_value() if self.cfg.admin_token else ""
        if not token:
            return self._refuse(ctx, 403, "admin endpoints are disabled: set MIXLLM_ADMIN_TOKEN", "forbidden")
        given = ctx.request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return self._refuse(ctx, 401, "missing or wrong bearer token", "unauthorized")
        previous = getattr(self.holder.router, "version", None)
        swapped = self.holder.refresh(force=True)
        st = self.holder.status()
        return ReloadResult(reloaded=swapped, previous_version=previous, router_version=st["router_version"],
                            source_version=st["source_version"], source_reachable=st["source_reachable"],
                            last_error=st["last_error"])


RouterService.add_asgi_middleware(ReadyzMiddleware)
