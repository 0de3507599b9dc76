"""The snapshot's subsample is a function of the rows and the seed, not of the order the store returns them in
(reproducible retraining, issue 16 item 5)."""

from __future__ import annotations

import pandas as pd
import pytest

from mixllm.pipeline import subsample

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsample_picks_the_same_queries_whatever_the_row_order(seed: int) -> None:
    df = pd.DataFrame({"query_id": [f"q{i // 4}" for i in range(200)], "model": ["a", "b", "c", "d"] * 50,
                       "task": ["x"] * 100 + ["y"] * 60 + [None] * 40})
    picked = set(subsample(df, 5, seed=seed).query_id)
    for shuffle in range(3):
        again = subsample(df.sample(frac=1, random_state=shuffle), 5, seed=seed)
        assert set(again.query_id) == picked and len(again) == 4 * len(picked)
    assert len(picked) == 15
