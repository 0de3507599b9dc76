"""Feedback closes the loop (issue 13 item 1): the store's ratings label the decisions they rate in the nightly
snapshot, the snapshot digest and the MLflow lineage cover them, and a real router retrained on that snapshot stops
sending thumbed-down prompts to the model users disliked."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from mixllm import pipeline as P
from mixllm.config import get_settings
from mixllm.feedback import FEEDBACK_ATTR, LABEL_SOURCE
from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.store import Store

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc)


def _records(log: pd.DataFrame) -> list[LogRecord]:
    return [LogRecord(**{k: (None if pd.isna(v) else v) for k, v in r.items()}) for r in log.to_dict("records")]


def _training_subset(routerbench_dir: Path) -> pd.DataFrame:
    """The rows the session's `trained_router_dir` was fitted on (14 train queries per task)."""
    from mixllm.data import load_routerbench

    log = load_routerbench(routerbench_dir, "train")
    keep = log.drop_duplicates("query_id").groupby("task").head(14)["query_id"]
    return log[log["query_id"].isin(keep)]


def test_snapshot_labels_rated_decisions_and_its_digest_covers_the_feedback(routerbench_dir: Path) -> None:
    settings = get_settings()
    store = Store(settings.store_url)
    full_info = _training_subset(routerbench_dir)
    store.append_logs(_records(full_info))
    config = P.PipelineConfig(max_train_queries_per_task=3)
    _, plain = P.snapshot(settings, config)

    served = [LogRecord(query_id=f"s{i}", prompt=f"served prompt {i}?", model="gpt-4-1106-preview",
                        router_version="1", propensity=0.9, ts=NOW) for i in range(5)]
    store.append_logs(served)
    with_decisions, digest_decisions = P.snapshot(settings, config)
    assert digest_decisions != plain
    assert set(with_decisions.query_id) >= {f"s{i}" for i in range(5)}  # subsampling never drops served decisions
    assert with_decisions[with_decisions.query_id.str.startswith("s")]["quality"].isna().all()

    store.append_feedback([FeedbackRecord(query_id="s0", model="gpt-4-1106-preview", rating=0.0, source="u",
                                          ts=NOW + timedelta(seconds=1)),
                           FeedbackRecord(query_id="s1", model="gpt-4-1106-preview", rating=1.0, source="u",
                                          ts=NOW + timedelta(seconds=1)),
                           FeedbackRecord(query_id="nope", model="gpt-4-1106-preview", rating=1.0, source="u")])
    rows, digest = P.snapshot(settings, config)
    assert digest not in (plain, digest_decisions)
    assert P.snapshot(settings, config)[1] == digest  # same store, same snapshot
    rated = rows[rows[LABEL_SOURCE] == "rating"].set_index("query_id")
    assert rated["quality"].to_dict() == {"s0": 0.0, "s1": 1.0}
    assert (rated["propensity"] == 0.9).all() and (rated["router_version"] == "1").all()
    info = rows.attrs[FEEDBACK_ATTR]
    assert info["per_model"] == {"gpt-4-1106-preview": 2}
    assert info["aside"] == {"unmatched: no logged decision for this (query_id, model)": 1}


@pytest.mark.slow
def test_thumbs_down_on_the_favourite_halves_its_share_after_the_nightly(routerbench_dir: Path,
                                                                          trained_router_dir: Path) -> None:
    """The issue's acceptance scenario on a small real router (real encoder, LightGBM): route 40 held-out
    Winogrande prompts at willingness-to-pay 1000, thumbs-down every answer of the favourite model, snapshot the
    store, retrain with the same settings: the new version sends at most half as many of them to that model. Its
    MLflow run records the labels (metrics per model, a `feedback` dataset input)."""
    import mlflow

    from mixllm.data import load_routerbench
    from mixllm.registry import Registry
    from mixllm.router import MixLLMRouter

    settings = get_settings()
    v1 = MixLLMRouter.load(trained_router_dir)
    test = load_routerbench(routerbench_dir, "test")
    held = test[test["task"].str.contains("winogrande")].drop_duplicates("query_id").head(40)
    prompts, qids = list(held["prompt"]), [f"served-{i}" for i in range(len(held))]
    decisions = v1.route(prompts, 1000.0, query_ids=qids)
    chosen = pd.Series([d.model for d in decisions])
    favourite, before = chosen.value_counts().index[0], int(chosen.value_counts().iloc[0])
    assert before >= 20, chosen.value_counts()

    store = Store(settings.store_url)
    store.append_logs(_records(_training_subset(routerbench_dir)))
    store.append_logs([LogRecord(query_id=q, prompt=p, model=d.model, router_version=d.router_version,
                                 propensity=d.propensity, ts=NOW) for q, p, d in zip(qids, prompts, decisions)])
    store.append_feedback([FeedbackRecord(query_id=q, model=d.model, rating=0.0, source="user",
                                          ts=NOW + timedelta(seconds=5))
                           for q, d in zip(qids, decisions) if d.model == favourite])
    train, digest = P.snapshot(settings, P.PipelineConfig())
    assert train.attrs[FEEDBACK_ATTR]["per_model"] == {favourite: before}

    v2 = MixLLMRouter(v1.config).fit(train)
    after = sum(d.model == favourite for d in v2.route(prompts, 1000.0))
    assert after <= before / 2, (favourite, before, after)

    out = v2.save(Path(settings.home) / "v2")
    reg = Registry(settings)
    version = reg.log_candidate(out, None, digest, {"epochs": 1}, snapshot=train)
    run = reg.client.get_run(reg.client.get_model_version(reg.name, version).run_id)
    assert run.data.metrics[f"labelled_decisions/{favourite}"] == before
    contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert contexts["feedback"].name.startswith("feedback-labels-")
    assert contexts["training"].digest == digest[:36]
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/feedback/summary.json")
    assert summary["labelled_by_rating"] == before
