"""Prometheus metrics of the router service, appended to BentoML's own ``/metrics`` (via ``__metrics__``).

BentoML already counts HTTP requests and their latency per endpoint (``bentoml_service_request_*``); these add what
only the router knows: decisions per model, feedback, online updates, which router version serves, batch sizes and
the outbox backlog. Under ``bentoml serve`` prometheus_client runs in multi-process mode (BentoML sets
``PROMETHEUS_MULTIPROC_DIR``) and BentoML's collector already exports every metric written by the worker, so
`render()` is only needed outside it; gauges use "mostrecent" so one value per series is exported.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.002, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.route_requests = Counter("mixllm_route_requests", "Routing requests by outcome.", ["endpoint", "status"],
                                      registry=r)
        self.route_latency = Histogram("mixllm_route_latency_seconds", "Time inside the service to route one prompt.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mixllm_route_batch_size", "Prompts routed together in one micro-batch.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.decisions = Counter("mixllm_decisions", "Routing decisions per chosen model.", ["model"], registry=r)
        self.sticky = Counter("mixllm_session_sticky", "Decisions where a session kept its earlier model.",
                              registry=r)
        self.feedback = Counter("mixllm_feedback", "Feedback events recorded, by kind (feedback=rating, log=observed).",
                                ["kind"], registry=r)
        self.online_updates = Counter("mixllm_online_updates", "router.update calls by result.", ["result"],
                                      registry=r)
        self.router_info = Gauge("mixllm_router_info", "1 for the router version being served (0 for earlier ones).",
                                 ["router_version", "source_version"], registry=r, multiprocess_mode="mostrecent")
        self.reloads = Counter("mixllm_router_reloads", "Router swaps (alias change or admin reload).", registry=r)
        self.source_up = Gauge("mixllm_router_source_up", "1 when the registry (or router dir) answered last poll.",
                               registry=r, multiprocess_mode="mostrecent")
        self.outbox_pending = Gauge("mixllm_outbox_pending", "Events not yet forwarded to the store.", registry=r,
                                    multiprocess_mode="mostrecent")
        self.upstream = Counter("mixllm_passthrough_calls", "Pass-through calls by routed model and outcome.",
                                ["model", "status"], registry=r)
        # Spend per hour (alerts, dashboard): the dollars observed per model, from the pass-through's usage
        # ("passthrough") or from cost_usd sent to /feedback ("feedback").
        self.spend = Counter("mixllm_spend_usd", "Observed LLM cost in USD by model and where it was reported.",
                             ["model", "source"], registry=r)

        self.arms = Counter("mixllm_route_arm", "Decisions by the router that made them (champion, or challenger "
                            "for the canary share).", ["arm"], registry=r)
        self.shadow_queued = Gauge("mixllm_shadow_queued", "Shadow requests waiting for the challenger.",
                                   registry=r, multiprocess_mode="mostrecent")
        self.shadow_decided = Gauge("mixllm_shadow_decided", "Shadow requests the challenger decided since the "
                                    "shadow process started.", registry=r, multiprocess_mode="mostrecent")

        self.spend_wtp = Gauge("mixllm_spend_willingness_to_pay", "Willingness to pay the daily spend controller "
                               "gives requests without their own.", registry=r, multiprocess_mode="mostrecent")
        self.spend_today = Gauge("mixllm_spend_today_usd", "Observed spend since 00:00 UTC (the controller's count).",
                                 registry=r, multiprocess_mode="mostrecent")
        self.spend_target = Gauge("mixllm_spend_target_usd", "The daily spend target.", registry=r,
                                  multiprocess_mode="mostrecent")

        self._router_labels: tuple[str, str] | None = None

    def refresh(self, engine: Any, shadow: bool) -> None:
        """Set the gauges from the engine's state at scrape time (outbox, source, spend controller, shadow queue)."""
        self.outbox_pending.set(engine.outbox.pending())
        self.source_up.set(1 if engine.holder.source_ok else 0)
        if engine.spend is not None:
            spend = engine.spend.status()
            self.spend_wtp.set(spend["willingness_to_pay"])
            self.spend_today.set(spend["spent_today_usd"])
            self.spend_target.set(spend["target_usd"])
        if shadow and engine.outbox is not None:
            queue = engine.outbox.shadow_status()
            self.shadow_queued.set(queue["queued"])
            self.shadow_decided.set(queue.get("decided", 0))

    def set_router(self, router_version: str, source_version: str | None) -> None:
        if self._router_labels is not None:  # clear() is not supported in multi-process mode
            self.router_info.labels(*self._router_labels).set(0)
        self._router_labels = (router_version, source_version or "")
        self.router_info.labels(*self._router_labels).set(1)

    def observe_cost(self, model: str, cost_usd: float | None, source: str) -> None:
        if cost_usd is not None and cost_usd >= 0:
            self.spend.labels(model, source).inc(cost_usd)

    @staticmethod
    def exported_by_bentoml() -> bool:
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")
