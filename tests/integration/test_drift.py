"""The drift monitor: real router, real store, real MLflow run, and the nightly deployment started on a real
(ephemeral) Prefect API when the traffic moved.

The champion is the session's tiny router (trained on all three bundled tasks); the store holds ARC-Challenge and
Winogrande training rows as its training data. A window of the same tasks' test prompts must not drift; a window of
MBPP prompts (code, a different population) must, with the embedding test as a reason.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixllm import drift as D
from mixllm.config import get_settings
from mixllm.data import ROUTERBENCH_TS, load_routerbench
from mixllm.registry import Registry
from mixllm.routers.registry import load_router
from mixllm.store import Store

pytestmark = pytest.mark.integration

NOW = datetime(2030, 1, 2, 12, tzinfo=timezone.utc)
CONFIG = D.DriftConfig(min_requests=40, max_sample=80, permutations=200)


def _queries(df: pd.DataFrame, tasks: list[str], per_task: int) -> pd.DataFrame:
    keep = df[df["task"].isin(tasks)].drop_duplicates("query_id").groupby("task").head(per_task)["query_id"]
    return df[df["query_id"].isin(keep)]


@pytest.fixture(scope="module")
def bundled(routerbench_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_routerbench(routerbench_dir, "train"), load_routerbench(routerbench_dir, "test")


def test_statistics_on_known_samples() -> None:
    rng = np.random.default_rng(0)
    same = D.mmd_test(rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), 200, rng)
    moved = D.mmd_test(rng.normal(size=(60, 5)), rng.normal(0.8, 1, size=(60, 5)), 200, rng)
    assert same[1] > 0.05 and moved[1] < 0.01 and moved[0] > same[0]
    with pytest.raises(ValueError):
        D.DriftConfig(mmd_alpha=2)
    bad = Path(get_settings().ensure_home()) / "drift.yaml"
    bad.write_text("mmd_alpha: lots\n")
    with pytest.raises(Exception, match="invalid drift file"):
        D.load_drift_config(bad)
    assert D.load_drift_config().mmd_alpha == 0.01


def test_same_population_does_not_drift_and_code_does(trained_router_dir: Path, bundled, tmp_path: Path) -> None:
    train, test = bundled
    router = load_router(trained_router_dir)
    reference = _queries(train, ["arc-challenge", "winogrande"], 60)
    calm = _queries(test, ["arc-challenge", "winogrande"], 30)
    code = _queries(test, ["mbpp"], 60)
    quiet = D.monitor(router, reference, calm, CONFIG, 1000.0)
    moved = D.monitor(router, reference, code, CONFIG, 1000.0)
    assert quiet.decided and not quiet.drifted, quiet.reasons
    assert moved.drifted and any(r.startswith("embedding_mmd") for r in moved.reasons)
    files = D.write_report(moved, tmp_path / "report")
    assert files["png"].stat().st_size > 10_000 and "DRIFT" in files["html"].read_text()
    assert json.loads(files["json"].read_text())["drifted"] is True
    few = D.monitor(router, reference, code[code["query_id"].isin(code["query_id"].unique()[:5])], CONFIG, 1000.0)
    assert not few.decided and not few.drifted and "too few requests" in few.note


def test_flow_logs_the_report_and_starts_the_nightly_deployment(trained_router_dir: Path, bundled,
                                                               tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from mixllm_flows.drift import drift_monitor
    from mixllm_flows.nightly import nightly

    train, test = bundled
    settings = get_settings()
    reg = Registry(settings)
    version = reg.log_candidate(trained_router_dir, None, "d" * 64)
    reg.promote(version, reason="drift test", who="test")
    store = Store(settings.store_url)
    reference = _queries(train, ["arc-challenge", "winogrande"], 60).assign(ts=ROUTERBENCH_TS)
    window = _queries(test, ["mbpp"], 60).assign(ts=NOW - timedelta(hours=1))
    rows = pd.concat([reference, window])
    store.append_logs(rows.astype(object).where(rows.notna(), None).to_dict("records"))
    store.dispose()
    config = tmp_path / "drift.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in CONFIG.model_dump().items()))
    deployment_id = nightly.to_deployment(name="it-drift").apply()
    out = drift_monitor(str(config), "mixllm-nightly/it-drift", str(tmp_path / "out"), NOW.isoformat())
    assert out["drifted"] and out["triggered"], out
    assert any(r.startswith("embedding_mmd") for r in out["reasons"])
    run = reg.client.get_run(out["run_id"])
    assert run.data.tags["mixllm.run_kind"] == "drift" and run.data.metrics["drifted"] == 1.0
    assert {a.path for a in reg.client.list_artifacts(out["run_id"], "drift")} >= {
        "drift/drift.html", "drift/drift.png", "drift/drift.json"}
    with get_client(sync_client=True) as client:
        started = client.read_flow_run(out["triggered"])
    assert str(started.deployment_id) == str(deployment_id) and "drift-triggered" in started.tags



def test_calibration_fires_on_a_real_miss_not_on_label_noise(trained_router_dir: Path, bundled) -> None:
    """45 thumbs whose mean sits 0.16 below the prediction of a coin-flip-like model: beyond the 0.15 threshold,
    but within label noise (z ~ 2.2, Bonferroni alpha 0.01): quiet. The same decisions all rated 0: fires."""
    train, _ = bundled
    router = load_router(trained_router_dir)
    reqs = train.drop_duplicates("query_id").head(45)
    pred = np.clip(np.asarray(router.predict(reqs["prompt"].tolist()).quality, float), 0, 1)
    j = int(np.argmin(np.abs(pred.mean(0) - 0.5)))  # the model whose labels are noisiest
    p = pred[:, j]
    assert 0.3 < p.mean() < 0.8
    ones = int(round((p.mean() - 0.16) * 45))
    labels = np.r_[np.ones(ones), np.zeros(45 - ones)]
    base = pd.DataFrame({"query_id": reqs["query_id"].to_numpy(), "prompt": reqs["prompt"].to_numpy(),
                         "model": router.models[j], "prompt_tokens": reqs["prompt_tokens"].to_numpy()})
    rng = np.random.default_rng(0)
    noisy = D._calibration_check(router, base.assign(quality=labels), D.DriftConfig(), rng)
    assert noisy.value > 0.15 and not noisy.fired, noisy.detail  # the raw-gap rule would have fired here
    missed = D._calibration_check(router, base.assign(quality=0.0), D.DriftConfig(), rng)
    assert missed.fired and missed.value > 0.3 and "p = " in missed.detail


def test_calibration_is_judged_against_the_held_out_gap_not_zero(trained_router_dir: Path, bundled) -> None:
    """A router whose chosen models' quality sits 0.3 below its predictions on held-out rows as well as in the window
    (an unchanged world with the optimizer's curse): no drift once the held-out gap is the baseline, though the
    raw gap fires against zero. The window 0.3 worse again than held-out: fires."""
    train, _ = bundled
    router = load_router(trained_router_dir)
    reqs = train.drop_duplicates("query_id").head(60)
    pred = np.asarray(router.predict(reqs["prompt"].tolist()).quality, float)
    rows = pd.DataFrame([{"query_id": q, "prompt": p, "model": m, "prompt_tokens": t, "quality": pred[i, j] - 0.3}
                         for i, (q, p, t) in enumerate(zip(reqs["query_id"], reqs["prompt"], reqs["prompt_tokens"]))
                         for j, m in enumerate(router.models)])
    cfg = D.DriftConfig()
    chosen = np.asarray(router.choose(router.predict(reqs["prompt"].tolist()), 1000.0), dtype=int)
    window = rows.set_index(["query_id", "model"]).loc[
        list(zip(reqs["query_id"], [router.models[j] for j in chosen]))].reset_index()
    window["quality"] += np.random.default_rng(1).normal(0, 0.05, len(window))  # label noise, so se > 0
    base = D.reference_calibration(router, rows, 1000.0, cfg, np.random.default_rng(0))
    assert sum(v["labels"] for v in base.values()) == len(reqs)
    assert all(abs(v["predicted"] - v["observed"] - 0.3) < 1e-9 for v in base.values())
    rng = np.random.default_rng(0)
    against_zero = D._calibration_check(router, window, cfg, rng)
    assert against_zero.fired and "zero" in against_zero.detail
    same_gap = D._calibration_check(router, window, cfg, rng, base)
    assert not same_gap.fired and same_gap.value < 0.1 and "held-out error +0.300" in same_gap.detail
    worse = D._calibration_check(router, window.assign(quality=window["quality"] - 0.3), cfg, rng, base)
    assert worse.fired and worse.value > 0.25
