"""The nightly validates each landing file once: `check_landing`'s result goes to `Store.ingest` (keyed by the
file's bytes and the contract), which validates only files it was not handed. Real store (SQLite), real GX suite,
a real log file with defects (tests/data/fixtures)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mixllm.config import get_settings
from mixllm.contracts import validate
from mixllm.data import read_log
from mixllm.pipeline import PipelineConfig, check_landing, ingest

pytestmark = pytest.mark.integration

DEFECTS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "log_with_defects.csv"


def test_ingest_reuses_the_landing_check_of_the_same_bytes_only(tmp_path: Path) -> None:
    path = shutil.copy(DEFECTS, tmp_path / "night_train.csv")
    check = check_landing(Path(path), PipelineConfig(max_quarantine_fraction=1.0))
    assert check.quarantined > 0 and check.result is not None
    assert "result" not in check.model_dump()  # the rows stay in the process, never in a run's record
    # A result of the same file under stricter rules, handed over under the check's key: ingest takes it as is.
    strict = validate(read_log(path), "log", max_prompt_chars=5)  # every prompt is longer: all quarantined
    assert len(strict.accepted) == 0 < check.accepted
    reused = ingest([Path(path)], get_settings(), checks=[check.model_copy(update={"result": strict})])[0]
    assert reused["quarantined"] == len(strict.quarantined) and reused["accepted"] == len(strict.accepted)

    changed = shutil.copy(DEFECTS, tmp_path / "other_train.csv")
    with open(changed, "a", encoding="utf-8") as fh:  # other bytes: the check does not apply, the store validates
        fh.write(DEFECTS.read_text(encoding="utf-8").splitlines()[1] + "\n")
    fresh = ingest([Path(changed)], get_settings(), checks=[check.model_copy(update={"result": strict})])[0]
    assert fresh["rows_read"] == check.rows + 1 and fresh["accepted"] == check.accepted  # its own rules' result
