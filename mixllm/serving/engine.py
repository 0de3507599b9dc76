"""The serving engine: route requests become decisions and log records, feedback becomes records and online
updates. One object behind every door: the BentoML service (`bento/service.py`) and `mixllm route` (the CLI).

What it guarantees, and why:

- **One forward pass per micro-batch.** Requests queue on a `MicroBatcher` while the encoder runs; a batch gets one
  `predict` for all prompts and one `decide` per (willingness to pay, constraints) group. A prompt with no eligible
  model gets its own error; the others in its group still get answers (per-item isolation).
- **Durable before answered.** Every decision's log record (with `router_version` and `propensity`, for off-policy
  training and evaluation) is committed to the outbox before any caller of the batch gets its answer.
- **Bounded online learning.** Feedback is validated against the decision it rates, stored, then folded into the
  live router on the routing thread, through `OnlineCaps` (per request id and per source).
- **Shadow and canary never slow the champion.** A sampled champion decision queues a shadow request in the same
  spool commit (no extra write); a low-priority process lets the challenger decide it (`mixllm.serving.
  shadow_worker`). A canary share of sessions (hashed `session_id`, else the request id) is decided by the
  challenger in the same micro-batch; without a loaded challenger every request stays with the champion.
- **Online state survives.** A router is loaded beside the serving one, warmed up and given the feedback received
  after its training snapshot (`mixllm.serving.replay`) before it serves; what the old router learned meanwhile
  is folded in right after the swap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mixllm.canary import CLEARED_TAG
from mixllm.catalogue import estimate_tokens
from mixllm.exceptions import MixLLMError, RoutingError, StoreError
from mixllm.schemas import FeedbackRecord, LogRecord, RouteDecision, utc_now
from mixllm.serving.batcher import MicroBatcher, limit_blas_threads, settle_heap
from mixllm.serving.caps import OnlineCaps
from mixllm.serving.holder import RouterHolder, RouterSource, StaticSource
from mixllm.serving.outbox import DecisionRef, Outbox
from mixllm.serving.replay import Learnable, snapshot_time, spooled_events, stored_events
from mixllm.serving.schemas import FeedbackRequest, RequestRejected, RouteRequest, constraints_of
from mixllm.serving.sessions import SessionTracker, StickyChoice
from mixllm.serving.spend import SpendController, TenantBudgets, spend_bounds
from mixllm.serving.settings import CANARY_ARM, CHAMPION_ARM, ServingSettings

log = logging.getLogger("mixllm.service")
_LEARN_ERRORS = (MixLLMError, ValueError, KeyError)  # what a router's update may refuse an event with
NOTHING_TO_LEARN = "no quality signal to learn from"


@dataclass(frozen=True)
class Routed:
    """One answered route request: the router's decision and the model the caller should use (session rule)."""

    request: RouteRequest
    decision: RouteDecision
    choice: StickyChoice
    arm: str = CHAMPION_ARM  # "champion", or "challenger" for a canary decision
    source_ref: str | None = None  # registry version (or local stamp) of the router that decided


@dataclass(frozen=True)
class FeedbackOutcome:
    query_id: str
    model: str
    recorded: list[str]
    applied_online: bool
    online_error: str | None
    capped: bool
    router_version: str | None

    @property
    def online(self) -> str:
        """"ok", "capped", "error", or "none" (nothing to learn): the online update's outcome, for metrics."""
        if self.applied_online:
            return "ok"
        return "capped" if self.capped else "none" if self.online_error == NOTHING_TO_LEARN else "error"


@dataclass
class ReplayReport:
    since: str | None = None
    events: int = 0
    applied: int = 0
    refused: int = 0
    error: str | None = None
    router_version: str | None = None


class ServingEngine:
    """Decisions, records and online updates for the router a `RouterSource` provides (see module docstring)."""

    def __init__(self, source: RouterSource, settings: ServingSettings | None = None, outbox: Outbox | None = None,
                 store_factory: Callable[[], Any] | None = None, max_prompt_chars: int | None = None,
                 default_wtp: float = 1000.0, on_batch: Callable[[int], None] | None = None,
                 on_swap: Callable[[Any, str | None], None] | None = None,
                 challenger: RouterSource | None = None) -> None:
        self.settings = settings or ServingSettings()
        self.outbox, self.store_factory = outbox, store_factory
        self.max_prompt_chars, self.default_wtp = max_prompt_chars, default_wtp
        self.sessions = SessionTracker(self.settings.sticky_margin, self.settings.session_ttl_seconds,
                                       self.settings.max_sessions)
        self.holder = RouterHolder(source, on_swap=self._swapped, prepare=self._prepare)
        # The canary arm: a second router, only warmed up (it learns nothing online; the nightly retrains it)
        self.challenger = (RouterHolder(challenger, prepare=self._warm_up)
                           if challenger is not None and self.settings.canary_share > 0 else None)
        self._shadow_draw = random.Random()
        self.spend, self.budgets = _spend_controller(self.settings, default_wtp), _budgets(self.settings)
        self._costed: OrderedDict[str, None] = OrderedDict()  # requests whose cost was counted (bounded)
        self._costed_lock = threading.Lock()
        self.replay = ReplayReport()
        self._on_batch, self._on_swap = on_batch, on_swap
        self._caps: weakref.WeakKeyDictionary[Any, OnlineCaps] = weakref.WeakKeyDictionary()
        self._catchup: list[Learnable] | None = None  # learned by the old router while a new one replays
        self._incoming: Any = None  # the router being prepared (replayed) to replace the serving one
        self.batcher: MicroBatcher[RouteRequest, Routed] | None = None
        self.updater: MicroBatcher[Learnable, str | None] | None = None

    @classmethod
    def for_router(cls, router: Any) -> "ServingEngine":
        """A stateless engine around one loaded router (no outbox, no replay, no threads): `mixllm route`."""
        engine = cls(StaticSource(router), ServingSettings(replay=False, poll_seconds=0))
        engine.holder.refresh()
        return engine

    # ------------------------------------------------------------------------------------------ lifecycle ----
    def start(self) -> None:
        """Start the routing and update threads, load the first router, follow the source."""
        limit_blas_threads()  # before any router code runs numpy: see limit_blas_threads
        # Every encoder forward pass runs on the batcher's thread (routing, warm-up, replay, feedback).
        self.batcher = MicroBatcher(self.decide_batch, self.settings.max_batch, name="router-batcher",
                                    on_batch=self._on_batch)
        self.updater = MicroBatcher(self._update_batch, self.settings.max_batch, name="router-updater")
        self.holder.refresh()
        self.holder.start_polling(self.settings.poll_seconds)
        if self.challenger is not None:  # no challenger yet: the champion serves every request meanwhile
            self.challenger.refresh()
            self.challenger.start_polling(self.settings.poll_seconds)

    def close(self, flush_timeout: float = 30.0) -> int:
        """Stop following the source, finish queued work, deliver the outbox; returns the events left in it.
        Closing twice does nothing more."""
        self.holder.stop()
        if self.challenger is not None:
            self.challenger.stop()
        for b in (self.updater, self.batcher):  # updates first: each one finishes on the routing thread
            if b is not None:
                b.close()
        self.batcher = self.updater = None
        outbox, self.outbox = self.outbox, None
        return outbox.close(flush_timeout) if outbox is not None else 0

    @property
    def router(self) -> Any:
        return self.holder.router

    def status(self) -> dict[str, Any]:
        status = self.holder.status()
        encoder = getattr(self.router, "encoder", None)  # which forward pass serves ("torch" | "onnx"; None: none)
        status["encoder_backend"] = getattr(encoder, "backend", "torch") if encoder is not None else None
        if self.outbox is not None:
            status["outbox_pending"] = self.outbox.pending()
            status["outbox_last_error"] = self.outbox.last_error
        status["sessions"] = len(self.sessions)
        status["replay"] = dict(vars(self.replay))
        if self.challenger is not None:
            c = self.challenger.status()
            status["canary"] = {"share": self.canary_share(), "cleared": self._canary_cleared(),
                                "active": self._canary_live(),
                                **{k: c[k] for k in ("router_version", "source", "source_version",
                                                     "source_reachable", "last_error")}}
        if self.spend is not None:
            status["spend"] = self.spend.status()
        if self.budgets is not None:
            status["tenants"] = self.budgets.status()
        if self.settings.shadow_sample > 0 and self.outbox is not None:
            status["shadow"] = {"sample": self.settings.shadow_sample, **self.outbox.shadow_status()}
        return status

    def observe_cost(self, request_id: str, cost_usd: float | None) -> None:
        """An observed cost counts toward the day's spend (controller) and its tenant's budget: once per request
        (the first report wins; a repeated /feedback cannot multiply it) and at most `spend_max_request_cost_usd`
        (one hostile report cannot spend the day's budget). The store keeps what was reported."""
        if cost_usd is None or (self.spend is None and self.budgets is None):
            return
        with self._costed_lock:
            if request_id in self._costed:
                return
            self._costed[request_id] = None
            while len(self._costed) > self.settings.max_sessions:
                self._costed.popitem(last=False)
        cost = min(cost_usd, self.settings.spend_max_request_cost_usd)
        if self.spend is not None:
            self.spend.observe(cost)
        if self.budgets is not None:
            self.budgets.charge(request_id, cost)

    def known_models(self) -> set[str]:
        """Models of the champion and, while a canary runs, of the challenger (feedback may rate either's)."""
        known = set(self.router.models) if self.router is not None else set()
        challenger = self.challenger.router if self.challenger is not None else None
        return known | set(challenger.models) if challenger is not None else known

    def _warm_up(self, router: Any, ref: str | None) -> None:
        limit_blas_threads()
        self._on_thread(lambda: router.predict(["warm-up"]))

    def _on_thread(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the routing thread (see MicroBatcher.call), or here when no batcher runs (the CLI)."""
        return self.batcher.call(fn).result() if self.batcher is not None else fn()

    def _prepare(self, router: Any, ref: str | None) -> None:
        """Before a loaded router serves: warm it up and replay what was learned since its training snapshot."""
        limit_blas_threads()  # again: loading a router can bring in another BLAS (scipy's, for the PCA)
        # First forward pass allocates buffers: pay it before traffic arrives, on the thread that will route.
        self._on_thread(lambda: router.predict(["warm-up"]))
        self._caps[router] = OnlineCaps(self.settings.feedback_source_limit,
                                        self.settings.feedback_source_window_seconds)
        if self.settings.replay and self.store_factory is not None:
            self._catchup, self._incoming = [], router
            try:
                self._replay(router)
            except BaseException:
                self._catchup = self._incoming = None  # not swapped in: nothing to catch up
                raise

    def _swapped(self, router: Any, ref: str | None) -> None:
        if self._catchup is not None:  # what the old router learned while this one replayed
            self._on_thread(lambda: self._fold_catchup(router))
        settle_heap()  # the loaded router and libraries leave the garbage collector's scans (see settle_heap)
        if self._on_swap is not None:
            self._on_swap(router, ref)

    def _fold_catchup(self, router: Any) -> None:
        items, self._catchup, self._incoming = self._catchup or [], None, None
        self._learn_on(router, items)

    def _replay(self, router: Any) -> None:
        since = snapshot_time(router.manifest)
        report = ReplayReport(since=since.isoformat() if since else None, router_version=str(router.version))
        try:
            store = self.store_factory()
            try:
                events = stored_events(store, since, self.settings.replay_max_events)
            finally:
                store.dispose()
            if self.outbox is not None:
                events += spooled_events(self.outbox, since, self.settings.replay_max_events)
        except Exception as e:  # noqa: BLE001 - a store that cannot be read must not stop the service from serving
            report.error = f"{type(e).__name__}: {e}"
            log.warning("cannot replay feedback into router %s (it serves without it): %s", router.version, e)
            self.replay = report
            return
        report.events = len(events)
        step = self.settings.replay_batch
        for i in range(0, len(events), step):  # routing runs between steps: a long replay never stalls a request
            out = self._on_thread(lambda chunk=events[i:i + step]: self._learn_on(router, chunk))
            report.applied += sum(r is None for r in out)
            report.refused += sum(r is not None for r in out)
        self.replay = report
        log.info("router %s replayed %d events received since %s (%d applied, %d refused)", router.version,
                 report.events, report.since, report.applied, report.refused)

    # ------------------------------------------------------------------------------------------ routing ------
    def requests(self, prompts: Sequence[str], field: str, willingness_to_pay: float | None,
                 allowed_models: Sequence[str] | None = None, max_cost_usd: float | None = None,
                 session_id: str | None = None, tenant: str | None = None) -> list[RouteRequest]:
        """Route requests for prompts, checked against the live router and the tenant's budget; `RequestRejected`
        names `field`. Without its own willingness to pay a request gets the spend controller's (or the default)."""
        router = self.router
        if router is None:
            raise RequestRejected("no router is loaded yet; see /readyz", None, "not_ready")
        if self.budgets is not None:
            why = self.budgets.over(tenant or "")
            if why is not None:
                raise RequestRejected(why, self.settings.tenant_header, "over_budget")
        limit = self.max_prompt_chars
        for p in prompts:
            if limit is not None and len(p) > limit:
                raise RequestRejected(f"prompt has {len(p)} characters, more than max_prompt_chars={limit}; "
                                      "shorten it", field, "too_long")
            if not p.strip():
                raise RequestRejected("prompt is blank", field, "too_short")
        if allowed_models is not None:
            unknown = sorted(set(allowed_models) - set(router.models))
            if unknown:
                raise RequestRejected(f"unknown models {unknown}; the router knows {list(router.models)}",
                                      "allowed_models", "unknown_model")
        constraints = constraints_of(allowed_models, max_cost_usd)
        wtp = willingness_to_pay if willingness_to_pay is not None else (
            self.spend.willingness_to_pay() if self.spend is not None else self.default_wtp)
        out = [RouteRequest(prompt=p, willingness_to_pay=wtp, constraints=constraints, session_id=session_id,
                            request_id=uuid.uuid4().hex, tenant=tenant) for p in prompts]
        if self.budgets is not None:
            for r in out:
                self.budgets.assign(r.request_id, tenant or "")
        return out

    async def route(self, requests: list[RouteRequest]) -> list[Routed]:
        """Route through the micro-batcher; `RequestRejected` when a request cannot be answered or logged."""
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(self.batcher.submit(r)) for r in requests)))
        except RoutingError as e:
            c = requests[0].constraints
            fld = "max_cost_usd" if c is not None and c.max_cost_usd is not None else "allowed_models"
            raise RequestRejected(str(e), fld, "not_ready" if self.router is None else "unroutable") from e
        except StoreError as e:
            raise RequestRejected(str(e), None, "store_unavailable") from e

    def decide_batch(self, requests: list[RouteRequest]) -> list[Routed | BaseException]:
        """Decide a micro-batch per arm (champion, canary challenger): one `predict` for each arm's distinct
        prompts, one `decide` per (willingness to pay, constraints) group, then one outbox commit before any caller
        gets its answer."""
        if self.router is None:
            return [RoutingError("no router is loaded yet; see /readyz")] * len(requests)
        results: list[Any] = [None] * len(requests)
        arms = self._arms(requests)
        for arm, holder in ((CHAMPION_ARM, self.holder), (CANARY_ARM, self.challenger)):
            idxs = [i for i, a in enumerate(arms) if a == arm]
            if idxs:
                sub = [requests[i] for i in idxs]
                for i, r in zip(idxs, self._decide_arm(holder, sub, arm)):
                    results[i] = r
        if self.outbox is not None:
            self._commit(requests, results)
        return results

    def _arms(self, requests: list[RouteRequest]) -> list[str]:
        """Which router decides each request: the challenger for a stable `canary_share` of session ids (a request
        without a session is its own), the champion otherwise or while no challenger is loaded."""
        share = self.canary_share()
        if not self._canary_live():
            return [CHAMPION_ARM] * len(requests)
        return [CANARY_ARM if canary_bucket(r.session_id or r.request_id or "", self.settings.canary_salt) < share
                else CHAMPION_ARM for r in requests]

    def canary_share(self) -> float:
        """The challenger's share now: `canary_cleared_share` once the canary flow cleared it at its exposure
        budget (a tag on its version, read at each poll), else `canary_share`. Growing the share keeps every
        session already on the challenger there (bucket < 0.05 is inside bucket < 0.2)."""
        cleared = self.settings.canary_cleared_share
        if cleared is not None and self._canary_cleared():
            return max(self.settings.canary_share, cleared)
        return self.settings.canary_share

    def _canary_cleared(self) -> bool:
        return self.challenger is not None and CLEARED_TAG in self.challenger.source.tags

    def _canary_live(self) -> bool:
        """A challenger is loaded and its source still names it (an alias removed by a rollback, or a registry
        that does not answer, pauses the canary: only the champion is known to be wanted)."""
        c = self.challenger
        return c is not None and c.router is not None and c.source_ok and self.settings.canary_share > 0

    def _decide_arm(self, holder: RouterHolder, requests: list[RouteRequest], arm: str) -> list[Any]:
        router, ref = holder.router, holder.ref
        groups: dict[tuple[float, Any], list[int]] = {}
        for i, r in enumerate(requests):  # frozen pydantic constraints hash by value
            groups.setdefault((r.willingness_to_pay, r.constraints), []).append(i)
        texts = [r.prompt for r in requests]
        position = {t: k for k, t in enumerate(dict.fromkeys(texts))}  # a prompt asked twice is encoded once
        distinct = list(position)
        rows = None if len(distinct) == len(texts) else [position[t] for t in texts]
        results: list[Any] = [None] * len(requests)
        with holder.lock:
            try:
                pred = router.predict(distinct)
            except MixLLMError as e:
                return [e] * len(requests)
            for idxs in groups.values():
                self._decide(router, pred, rows, requests, idxs, results, (arm, ref))
        return results

    def _decide(self, router: Any, pred: Any, rows: list[int] | None, requests: list[RouteRequest],
                idxs: list[int], results: list[Any], arm: tuple[str, str | None] = (CHAMPION_ARM, None)) -> None:
        first = requests[idxs[0]]
        whole = rows is None and len(idxs) == len(requests)
        part = pred if whole else pred.take([i if rows is None else rows[i] for i in idxs])
        try:
            decisions = router.decide(part, first.willingness_to_pay, first.constraints,
                                      query_ids=[requests[i].request_id for i in idxs])
        except MixLLMError as e:
            if len(idxs) == 1:
                results[idxs[0]] = e
                return
            for i in idxs:  # isolate the prompt that has no eligible model; the others still get answers
                self._decide(router, pred, rows, requests, [i], results, arm)
            return
        for i, d in zip(idxs, decisions):
            results[i] = Routed(requests[i], d, self.sessions.choose(requests[i].session_id, d), *arm)

    def _commit(self, requests: list[RouteRequest], results: list[Any]) -> None:
        """Log every answered decision durably; if the spool fails, those callers get the StoreError instead."""
        ok = [r for r in results if isinstance(r, Routed)]
        records, refs = [], []
        for r in ok:
            rid, prompt, d = r.request.request_id, r.request.prompt, r.decision
            tokens = estimate_tokens(prompt)
            records.append(LogRecord(query_id=rid, prompt=prompt, model=r.choice.model, prompt_tokens=tokens,
                                     ts=utc_now(), router_version=d.router_version, propensity=d.propensity))
            refs.append(DecisionRef(rid, prompt, r.choice.model, d.router_version, tokens, d.propensity))
        try:
            self.outbox.put(records, refs, self._shadow_payloads(ok))  # the answer leaves once it is durable
        except StoreError as e:
            for i, r in enumerate(results):
                if isinstance(r, Routed):
                    results[i] = e

    def _shadow_payloads(self, routed: list[Routed]) -> list[str]:
        """The sampled champion decisions the challenger should also decide (JSON rows of the spool's queue)."""
        sample = self.settings.shadow_sample
        if sample <= 0:
            return []
        out = []
        for r in routed:
            if r.arm != CHAMPION_ARM or (sample < 1 and self._shadow_draw.random() >= sample):
                continue
            d, req = r.decision, r.request
            own = next((c for c in d.candidates if c.model == d.model), None)
            out.append(json.dumps({
                "request_id": req.request_id, "prompt": req.prompt, "willingness_to_pay": req.willingness_to_pay,
                "constraints": req.constraints.model_dump(mode="json") if req.constraints is not None else None,
                "champion_version": d.router_version, "champion_model": d.model, "ts": utc_now().isoformat(),
                "champion_quality": own.predicted_quality if own else None,
                "champion_cost": own.predicted_cost_usd if own else None}))
        return out

    # ------------------------------------------------------------------------------------------ feedback -----
    async def feedback(self, req: FeedbackRequest) -> FeedbackOutcome:
        """Validate feedback against the decision it rates, store it (durable before the answer), learn online."""
        qid = req.key
        ref = self.outbox.decision(qid) if self.outbox is not None else None
        records = self.feedback_records(req, ref)
        try:
            await asyncio.to_thread(self.outbox.put, records)  # durable before we answer
        except StoreError as e:
            raise RequestRejected(str(e), None, "store_unavailable") from e
        for r in records:
            if isinstance(r, LogRecord):
                self.observe_cost(qid, r.cost_usd)
        applied, why, capped = await self._learn(records, ref, req.source)
        router = self.router
        return FeedbackOutcome(query_id=qid, model=records[0].model, recorded=[
            "feedback" if isinstance(r, FeedbackRecord) else "log" for r in records], applied_online=applied,
            online_error=why, capped=capped, router_version=str(router.version) if router is not None else None)

    def feedback_records(self, req: FeedbackRequest, ref: DecisionRef | None) -> list[LogRecord | FeedbackRecord]:
        """The rows a feedback request adds: a rating, and/or an observation of the rated decision."""
        qid = req.key
        if req.request_id is not None and ref is None:
            raise RequestRejected(f"unknown request_id {req.request_id!r} (not routed by this service, or older than "
                                  "the retention window)", "request_id", "not_found")
        model = req.model or (ref.model if ref else None)
        known = self.known_models()
        if known and model not in known:
            raise RequestRejected(f"unknown model {model!r}; the router knows {sorted(known)}", "model",
                                  "unknown_model")
        records: list[LogRecord | FeedbackRecord] = []
        if req.rating is not None:
            records.append(FeedbackRecord(query_id=qid, model=model, rating=req.rating, source=req.source,
                                          ts=utc_now()))
        if req.observed:
            if ref is None:
                raise RequestRejected(f"no prompt is known for query {qid!r}, so quality/cost cannot be logged; send "
                                      "`rating` only, or route the query through /route first", "query_id",
                                      "not_found")
            same = ref.model == model  # an observation of another model than the routed one was not its choice
            records.append(LogRecord(query_id=qid, prompt=ref.prompt, model=model, quality=req.quality,
                                     cost_usd=req.cost_usd, latency_ms=req.latency_ms,
                                     prompt_tokens=ref.prompt_tokens, completion_tokens=req.completion_tokens,
                                     ts=utc_now(), router_version=ref.router_version if same else None,
                                     propensity=ref.propensity if same else None))
        return records

    async def _learn(self, records: list[Any], ref: DecisionRef | None, source: str) -> tuple[bool, str | None, bool]:
        """Online update of the live router: an observed quality wins over a rating of the same answer.
        Returns (applied, why not, refused by a cap)."""
        learnable = [r for r in records if isinstance(r, FeedbackRecord) or r.quality is not None]
        if not learnable:
            return False, NOTHING_TO_LEARN, False
        item = Learnable(learnable[-1], ref.prompt if ref else None, source)
        challenger = self._decided_by_challenger(ref)
        try:
            if challenger is not None:  # a canary decision: the challenger learns it (each arm from its own traffic)
                refused = (await asyncio.wrap_future(self.batcher.call(
                    lambda: self._learn_on(challenger, [item], self.challenger))))[0]
                if isinstance(refused, BaseException):
                    raise refused
            else:
                refused = await asyncio.wrap_future(self.updater.submit(item))
        except _LEARN_ERRORS as e:
            return False, f"{type(e).__name__}: {e}", False
        return refused is None, refused, refused is not None

    def _decided_by_challenger(self, ref: DecisionRef | None) -> Any:
        """The live challenger if it made the rated decision (its router_version), else None."""
        if ref is None or self.challenger is None or self.batcher is None:
            return None
        router = self.challenger.router
        return router if router is not None and str(router.version) == ref.router_version else None

    async def passthrough(self, routed: Routed, text: str, data: dict[str, Any], spec: Any,
                          latency_ms: float) -> LogRecord:
        """The observation of a pass-through call: tokens from the upstream's `usage` (estimated when absent),
        cost from the catalogue's prices; stored, and learned online (cost residual) without the caller waiting."""
        usage = data.get("usage") or {}
        answer = " ".join(str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or []
                          if isinstance(c, dict))
        pt = int(usage.get("prompt_tokens") or estimate_tokens(text))
        ct = int(usage.get("completion_tokens") or estimate_tokens(answer))
        d = routed.decision
        record = LogRecord(query_id=routed.request.request_id, prompt=text, model=routed.choice.model,
                           cost_usd=spec.cost_usd(pt, ct), prompt_tokens=pt, completion_tokens=ct,
                           latency_ms=latency_ms, ts=utc_now(), router_version=d.router_version,
                           propensity=d.propensity)
        self.observe_cost(record.query_id, record.cost_usd)
        try:
            await asyncio.to_thread(self.outbox.put, [record])
        except StoreError as e:
            log.error("pass-through observation of %s not recorded: %s", record.query_id, e)
        self.updater.submit(Learnable(record, text, "passthrough"))  # the caller does not wait for it
        return record

    # ------------------------------------------------------------------------------------------ learning -----
    def _update_batch(self, items: list[Learnable]) -> list[Any]:
        """Fold a micro-batch of feedback into the live router with one `update_many` (one encoder pass, on the
        routing thread: see MicroBatcher.call)."""
        def run() -> list[Any]:
            router = self.router
            if router is None:
                return [RoutingError("no router is loaded yet; see /readyz")] * len(items)
            out = self._learn_on(router, items)
            if self._catchup is not None and router is not self._incoming:  # the replaying router learns these
                self._catchup += [it for it, r in zip(items, out) if r is None]  # too, right after its swap
            return out
        return self._on_thread(run)

    def _learn_on(self, router: Any, items: Sequence[Learnable], holder: RouterHolder | None = None) -> list[Any]:
        """Apply what the caps admit to `router`; per item: None (learned), the reason it was refused (str), or the
        exception the router refused it with. One bad event never blocks the others."""
        caps = self._caps.setdefault(router, OnlineCaps(self.settings.feedback_source_limit,
                                                        self.settings.feedback_source_window_seconds))
        out: list[Any] = [caps.admit(it.record, it.source) for it in items]
        todo = [k for k, why in enumerate(out) if why is None]
        if not todo:
            return out
        with (holder or self.holder).lock:
            try:
                router.update_many([items[k].record for k in todo], [items[k].prompt for k in todo])
                return out
            except _LEARN_ERRORS as e:
                if len(todo) == 1:
                    out[todo[0]] = e
                    return out
            for k in todo:  # isolate the event the router refused; the others are still learned
                try:
                    router.update(items[k].record, prompt=items[k].prompt)
                except _LEARN_ERRORS as e:
                    out[k] = e
        return out


def canary_bucket(key: str, salt: str) -> float:
    """A stable draw in [0, 1) per key: the same session lands in the same arm on every request and restart."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _spend_controller(cfg: ServingSettings, default_wtp: float) -> SpendController | None:
    if cfg.daily_spend_target_usd is None:
        return None
    lo, hi = spend_bounds(default_wtp, cfg.spend_wtp_min, cfg.spend_wtp_max)
    start = min(max(default_wtp, lo), hi)
    return SpendController(cfg.daily_spend_target_usd, start, lo, hi, cfg.spend_gain, cfg.spend_interval_seconds)


def _budgets(cfg: ServingSettings) -> TenantBudgets | None:
    if not cfg.tenant_budgets and cfg.default_tenant_budget_usd is None:
        return None
    return TenantBudgets(cfg.tenant_budgets, cfg.default_tenant_budget_usd, cfg.max_sessions)
