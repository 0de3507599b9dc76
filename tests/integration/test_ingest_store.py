"""Ingest into the real store (SQLite, WAL): idempotency, quarantine with reasons, lineage, concurrent appends, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from mixllm.exceptions import ContractError, StoreError
from mixllm.schemas import FeedbackRecord, LogRecord
from mixllm.store import Store

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
DEFECTS = FIXTURES / "log_with_defects.csv"
MIXLLM = str(Path(sys.executable).parent / "mixllm")


def test_bundled_sample_lands_once(routerbench_dir: Path, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    files = sorted(routerbench_dir.glob("*_train.csv.gz"))
    first = store.ingest(files)
    wide_rows = sum(len(pd.read_csv(f)) for f in files)
    assert sum(r.accepted for r in first) == wide_rows * 11
    assert sum(r.quarantined + r.duplicate for r in first) == 0
    logs, digest = store.snapshot()
    assert len(logs) == wide_rows * 11 and logs.quality.isna().sum() > 0  # unknown quality kept
    # pinned before router_version/propensity existed: rows without them keep their digests (contract v2)
    assert digest == "a1ed9319988fbf57f1bc85b2e56bc8972340cd00b60d2781c60d27dbc5f53234"

    again = Store(store.url).ingest(files)  # a new Store: state survives a restart
    assert [r.accepted for r in again] == [0, 0, 0] and all(r.seen_before for r in again)
    assert [r.duplicate for r in again] == [r.rows_read for r in again]
    assert [r.file_digest for r in again] == [r.file_digest for r in first]
    assert store.snapshot()[1] == digest
    batches = store.batches()
    assert len(batches) == 6 and set(batches.file_digest) == {r.file_digest for r in first}


def test_quarantine_holds_every_bad_row_with_its_reason_and_good_rows_land(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    (report,) = store.ingest([DEFECTS])
    raw = pd.read_csv(DEFECTS, dtype=str, keep_default_na=False)
    assert report.rows_read == len(raw) == report.accepted + report.quarantined + report.duplicate
    q = store.quarantine()
    assert len(q) == report.quarantined == 10
    reasons = dict(zip(q.row_number, q.reason))
    assert "quality" in reasons[4] and "'1.5'" in reasons[4]          # quality 1.5
    assert "not_be_null(prompt)" in reasons[5]                          # empty prompt
    assert "'abc'" in reasons[6] and "'NaN'" in reasons[7]              # wrong types, not coerced to null
    assert "cost_usd" in reasons[8] and "prompt_tokens" in reasons[9]   # negative cost, -3.5 tokens
    assert "ts" in reasons[10]
    assert "compound_columns_to_be_unique" in reasons[12] and "compound_columns_to_be_unique" in reasons[13]
    assert "query_id" in reasons[14]
    assert json.loads(q.raw[q.row_number == 6].iloc[0])["quality"] == "abc"
    logs = store.logs()
    assert sorted(set(logs.query_id)) == ["q1", "q10", "q2"] and len(logs) == report.accepted == 4
    assert logs[logs.query_id == "q10"].prompt.iloc[0] == "Héllo wörld ✓ 你好"

    (again,) = store.ingest([DEFECTS])
    assert (again.accepted, again.quarantined, again.duplicate) == (0, 0, report.rows_read)
    assert len(store.quarantine()) == 10
    assert len(store.quarantine(batch_id=report.batch_id[:8])) == 10 and store.quarantine(batch_id="zz").empty
    assert len(store.quarantine(limit=3)) == 3


def test_same_rows_in_another_format_add_nothing(tmp_path: Path) -> None:
    """Row digests, not the file digest, make this idempotent (the bytes differ)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.ingest([DEFECTS])
    copy = tmp_path / "copy.jsonl"
    df = pd.read_csv(DEFECTS, dtype=str, keep_default_na=False, na_values=[""])
    df.to_json(copy, orient="records", lines=True, force_ascii=False)
    (report,) = store.ingest([copy])
    assert report.accepted == 0 and report.quarantined == 0 and report.duplicate == len(df)
    assert not report.seen_before
    assert len(store.quarantine()) == 10 and len(store.logs()) == 4


def test_a_changed_contract_revalidates_a_seen_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).ingest([DEFECTS])
    monkeypatch.setenv("MIXLLM_MAX_PROMPT_CHARS", "12")  # a stricter contract: the same file is checked again
    (report,) = Store(url).ingest([DEFECTS])
    assert report.accepted == 0 and report.quarantined > 0  # long prompts of good rows now fail; stored rows stay


def test_bad_path_fails_before_anything_lands(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(ContractError, match="no such file"):
        store.ingest([DEFECTS, tmp_path / "missing.csv"])
    assert store.batches().empty and store.logs().empty


def test_concurrent_appends_are_durable_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    stores = [Store(url), Store(url)]  # two handles, like two service workers
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    records = [[LogRecord(query_id=f"t{t}-{i}", prompt=f"p{i}", model="m", quality=0.5, cost_usd=0.001,
                          ts=now) for i in range(30)] for t in range(8)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(0, 30, 3):
                stores[t % 2].append_logs(records[t][i:i + 3])
                stores[t % 2].append_feedback([FeedbackRecord(query_id=f"t{t}-{i}", model="m", rating=1.0, ts=now)])
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    fresh = Store(url)
    assert len(fresh.logs()) == 240 and len(fresh.feedback()) == 80
    assert fresh.append_logs(records[0]) == 0  # a retried call adds nothing
    _, digest = fresh.snapshot()
    assert fresh.append_logs([{"query_id": "new", "prompt": "p", "model": "m"}]) == 1
    assert fresh.snapshot()[1] != digest
    assert fresh.batches().empty  # service appends are not file ingests


def test_service_rows_and_file_rows_share_one_digest(tmp_path: Path) -> None:
    """A row logged by the service and the same row in a file later are one observation, not two."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    rec = LogRecord(query_id="s1", prompt="Héllo?", model="m", quality=1.0, cost_usd=0.5, prompt_tokens=3,
                    completion_tokens=None, latency_ms=12.0, task=None, ts=datetime(2026, 11, 1, 8, 30, 0, 123456,
                                                                                      tzinfo=timezone.utc))
    assert store.append_logs([rec, rec]) == 1
    path = tmp_path / "same.csv"
    path.write_text("query_id,prompt,model,quality,cost_usd,prompt_tokens,latency_ms,ts\n"
                    "s1,Héllo?,m,1,0.50,3,12,2026-11-01T09:30:00.123456+01:00\n", encoding="utf-8")
    (report,) = store.ingest([path])
    assert (report.accepted, report.duplicate) == (0, 1)
    assert len(store.logs()) == 1


def test_append_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_MAX_PROMPT_CHARS", "10")
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(ContractError, match="quality"):
        store.append_logs([{"query_id": "q", "prompt": "p", "model": "m", "quality": 1.5}])
    with pytest.raises(ContractError, match="max_prompt_chars"):
        store.append_logs([LogRecord(query_id="q", prompt="x" * 11, model="m")])
    with pytest.raises(ContractError, match="rating"):
        store.append_feedback([{"query_id": "q", "model": "m", "rating": -1}])
    assert store.logs().empty and store.feedback().empty


def test_feedback_ingest(tmp_path: Path) -> None:
    path = tmp_path / "fb.csv"
    path.write_text("query_id,model,rating,ts,source\nq1,m,1,,\nq2,m,0,2026-11-01T00:00:00Z,ui\nq3,m,up,,\n")
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    (report,) = store.ingest([path], kind="feedback")
    assert (report.accepted, report.quarantined) == (2, 1)
    fb = store.feedback()
    assert list(fb.source) == ["file", "ui"] and str(fb.ts.dt.tz) == "UTC"
    assert "rating" in store.quarantine().reason[0]


def test_unusable_store_url() -> None:
    with pytest.raises(StoreError, match="cannot open the store"):
        Store("nosuchdialect://x")


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIXLLM_HOME": str(home)}
    return subprocess.run([MIXLLM, *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_ingest_quarantine_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process (GX is imported once per test session); the console script itself is run by the test below."""
    from typer.testing import CliRunner

    from mixllm.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("MIXLLM_HOME", str(home))
    runner = CliRunner()
    out = runner.invoke(app, ["ingest", str(DEFECTS), "--json"])
    assert out.exit_code == 0, out.output
    (report,) = [json.loads(line) for line in out.output.splitlines()]
    assert (report["accepted"], report["quarantined"], report["duplicate"]) == (4, 10, 1)
    assert (home / "store.db").exists()  # the embedded default store lives in the project data folder
    again = runner.invoke(app, ["ingest", str(DEFECTS)])
    assert again.exit_code == 0, again.output
    total = next(line for line in again.output.splitlines() if "total" in line)
    assert [c.strip() for c in total.split("│")[3:7]] == ["15", "0", "0", "15"]  # rows, accepted, quarantined, dup
    q = runner.invoke(app, ["quarantine", "--json"])
    rows = [json.loads(line) for line in q.output.splitlines()]
    assert len(rows) == 10 and all(r["reason"] and r["expectation"] for r in rows)
    assert len(runner.invoke(app, ["quarantine", "--json", "--limit", "3"]).output.splitlines()) == 3
    listing = runner.invoke(app, ["quarantine", "--limit", "0"]).output
    assert "expect_column_values_to_match_regex(quality): got 'abc'" in listing
    assert "log_with_defects.csv:14" in listing
    batches = runner.invoke(app, ["batches"]).output
    assert batches.count("log_with_defects.csv") == 2


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli("ingest", "/nonexistent/log.csv", home=tmp_path / "home")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("mixllm: error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "no such file" in out.stderr and "Traceback" not in out.stderr

    from mixllm import cli

    for args in (["ingest", "README.md"], ["ingest", str(tmp_path)], ["quarantine", "--store", "bogus://"]):
        monkeypatch.setattr(sys, "argv", ["mixllm", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("mixllm: error: ") and len(err.strip().splitlines()) == 1, err


def test_a_store_created_before_the_policy_columns_gains_them_at_open(tmp_path: Path) -> None:
    """An older store (interactions without router_version/propensity) keeps working: the columns are added when a
    Store opens it, its rows read back with nulls there, and their digests (hence the snapshot digest) stay put."""
    import sqlalchemy as sa

    from mixllm.store import INTERACTIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old_meta = sa.MetaData()
    old = sa.Table("interactions", old_meta, *[sa.Column(c.name, c.type, primary_key=c.primary_key,
                                                         nullable=c.nullable, unique=c.unique)
                                               for c in INTERACTIONS.columns
                                               if c.name not in ("router_version", "propensity", "extra")])
    engine = sa.create_engine(url)
    old_meta.create_all(engine)
    ts = datetime(2026, 11, 1)
    legacy = LogRecord(query_id="old", prompt="p", model="m", quality=1.0, ts=ts.replace(tzinfo=timezone.utc))
    from mixllm.contracts import record_digest

    with engine.begin() as conn:
        conn.execute(sa.insert(old), [{"row_digest": record_digest(legacy.model_dump(), "log"), "batch_id": "b",
                                       "query_id": "old", "prompt": "p", "model": "m", "quality": 1.0, "ts": ts}])
    engine.dispose()

    store, again = Store(url), Store(url)  # the second open finds the columns there already
    cols = {c["name"] for c in sa.inspect(store.engine).get_columns("interactions")}
    assert {"router_version", "propensity", "extra"} <= cols
    logs = store.logs()
    assert list(logs.query_id) == ["old"] and logs.propensity.isna().all() and logs.router_version.isna().all()
    assert store.append_logs([legacy]) == 0  # same content, same digest as the row the old store holds
    chosen = LogRecord(query_id="new", prompt="p", model="m", router_version="7", propensity=0.25, ts=legacy.ts)
    assert again.append_logs([chosen]) == 1
    row = store.logs().iloc[-1]
    assert (row.router_version, row.propensity) == ("7", 0.25)


def test_policy_columns_land_from_files_and_bad_propensities_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "served.csv"
    path.write_text("query_id,prompt,model,quality,router_version,propensity\n"
                    "a,p,m,1,3,0.5\nb,p,m,,3,1\nc,p,m,,3,0\nd,p,m,,,\n")
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    (report,) = store.ingest([path])
    assert (report.accepted, report.quarantined) == (3, 1)
    logs = store.logs().set_index("query_id")
    assert logs.loc["a", "propensity"] == 0.5 and logs.loc["b", "router_version"] == "3"
    assert pd.isna(logs.loc["d", "propensity"])
    assert "propensity" in store.quarantine().reason[0]


def test_reads_since_a_time_and_the_feedback_snapshot_digest(tmp_path: Path) -> None:
    """What the service replays after a restart (feedback newer than its training data) and what the nightly
    snapshot's lineage digests (every rating, once)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    t = [datetime(2026, 11, d, tzinfo=timezone.utc) for d in (1, 2, 3)]
    store.append_logs([LogRecord(query_id=f"q{i}", prompt="p", model="m", ts=ts) for i, ts in enumerate(t)])
    assert store.feedback_snapshot()[1] is None
    store.append_feedback([FeedbackRecord(query_id=f"q{i}", model="m", rating=1.0, ts=ts) for i, ts in enumerate(t)])
    assert list(store.logs(since=t[1]).query_id) == ["q1", "q2"]
    assert list(store.feedback(since=t[2]).query_id) == ["q2"] and store.feedback().rating.dtype == float
    assert list(store.feedback(since=datetime(2026, 11, 2, 12)).query_id) == ["q2"]  # naive = UTC
    fb, digest = store.feedback_snapshot()
    assert len(fb) == 3 and digest
    store.append_feedback([FeedbackRecord(query_id="q0", model="m", rating=0.0, ts=t[2])])
    assert store.feedback_snapshot()[1] != digest


def test_the_snapshot_caps_what_one_feedback_source_contributes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """PipelineConfig.feedback.max_labels_per_source: a bot rating every decision labels only its latest N; the
    rest are set aside with the reason, and the cap is part of the snapshot digest."""
    from mixllm.config import get_settings
    from mixllm.feedback import FEEDBACK_ATTR, FeedbackConfig
    from mixllm.pipeline import PipelineConfig, snapshot

    monkeypatch.setenv("MIXLLM_STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    settings = get_settings()
    store = Store(settings.store_url)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    store.append_logs([LogRecord(query_id=f"q{i}", prompt=f"p{i}", model="m", router_version="1", propensity=0.5,
                                 ts=t0) for i in range(8)])
    store.append_feedback([FeedbackRecord(query_id=f"q{i}", model="m", rating=0.0, source="bot",
                                          ts=t0.replace(hour=i + 1)) for i in range(8)]
                          + [FeedbackRecord(query_id="q0", model="m", rating=1.0, source="alice",
                                            ts=t0.replace(hour=12))])
    store.dispose()
    free, free_digest = snapshot(settings, PipelineConfig())
    capped, digest = snapshot(settings, PipelineConfig(feedback=FeedbackConfig(max_labels_per_source=3)))
    assert free.attrs[FEEDBACK_ATTR]["labelled_by_rating"] == 8
    summary = capped.attrs[FEEDBACK_ATTR]
    assert summary["labelled_by_rating"] == 4  # the bot's latest three and alice's one
    assert sorted(capped.loc[capped.quality.notna(), "query_id"]) == ["q0", "q5", "q6", "q7"]
    assert [n for why, n in summary["aside"].items() if why.startswith("capped:")] == [5]
    assert digest != free_digest and snapshot(settings, PipelineConfig(
        feedback=FeedbackConfig(max_labels_per_source=3)))[1] == digest


def test_extra_columns_land_as_metadata_with_a_note_and_leave_the_snapshot_digest_alone(tmp_path: Path) -> None:
    """Issue 14 item 4: a gateway export with `tenant`, `user`, `metric` (and a typo) is accepted; the extras land
    as JSON in the `extra` column (quarantined rows keep them in their raw row), the report names them, and the
    store's rows and snapshot digest are those of the same file without the extra columns."""
    from mixllm.schemas import EXTRA_COLUMN

    rows = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "prompt": ["a", "b", "c"], "model": ["m", "m", "m"],
                         "quality": ["1", "0.5", "7"], "ts": ["2026-11-01T00:00:00Z"] * 3})
    plain, extra = tmp_path / "plain.csv", tmp_path / "gateway.csv"
    rows.to_csv(plain, index=False)
    rows.assign(tenant=["acme", "beta", "acme"], user=["u1", "", "u3"], metric=["em", "em", "f1"],
                cost_usdd=["0.1", "0.2", "0.3"]).to_csv(extra, index=False)
    with_extra, without = Store(f"sqlite:///{tmp_path / 'a.db'}"), Store(f"sqlite:///{tmp_path / 'b.db'}")
    (report,) = with_extra.ingest([extra])
    assert (report.accepted, report.quarantined) == (2, 1)
    assert report.extra_columns == ("tenant", "user", "metric", "cost_usdd")
    assert len(report.notes) == 1 and "kept as metadata" in report.notes[0]
    assert "'cost_usdd' -> 'cost_usd'" in report.notes[0]  # a likely typo is pointed out, not refused
    without.ingest([plain])
    assert with_extra.snapshot()[1] == without.snapshot()[1]
    logs = with_extra.logs(extra=True)
    assert [json.loads(x) for x in logs[EXTRA_COLUMN]] == [
        {"tenant": "acme", "user": "u1", "metric": "em", "cost_usdd": "0.1"},
        {"tenant": "beta", "metric": "em", "cost_usdd": "0.2"}]
    assert list(with_extra.logs().columns) == list(without.logs().columns)
    raw = json.loads(with_extra.quarantine().raw[0])
    assert raw["quality"] == "7" and raw[EXTRA_COLUMN] == {"tenant": "acme", "user": "u3", "metric": "f1",
                                                           "cost_usdd": "0.3"}
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps({"query_id": "q1", "model": "m", "rating": 1, "user": {"id": 7, "plan": "pro"}}) + "\n")
    (fb_report,) = with_extra.ingest([fb], kind="feedback")
    assert fb_report.accepted == 1 and fb_report.extra_columns == ("user",)
    assert json.loads(with_extra.feedback(extra=True)[EXTRA_COLUMN][0]) == {"user": {"id": 7, "plan": "pro"}}
