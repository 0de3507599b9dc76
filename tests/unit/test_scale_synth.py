"""bench/scale.py's scale-up of the RouterBench sample: every prompt new, each copy keeps its source's per-LLM
quality (up to the flip noise) and its cost re-priced for its own length. (The landing contract accepting the rows
is checked by every run of the script: the nightly flow validates them.)"""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixllm.data import load_routerbench

pytestmark = pytest.mark.unit


def _scale():
    path = Path(__file__).resolve().parents[2] / "bench" / "scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source(routerbench_dir):
    return load_routerbench(routerbench_dir, "train")


def test_copies_are_new_prompts_with_their_sources_quality_and_repriced_cost(source):
    from mixllm.catalogue import load_catalogue

    scale = _scale()
    n_src = source["query_id"].nunique()
    ts = datetime(2026, 12, 1, tzinfo=timezone.utc)
    first = scale.synthesise(source, n_src + 300, 0, seed=0, noise=0.0, ts=ts)
    later = scale.synthesise(source, 200, n_src + 300, seed=0, noise=0.0, ts=ts)
    both = pd.concat([first, later], ignore_index=True)
    assert both["prompt"].nunique() == both["query_id"].nunique() == n_src + 500  # no prompt twice, nor id
    assert (both.groupby("query_id")["prompt"].nunique() == 1).all() and len(both) == 11 * (n_src + 500)
    copies = later[later["model"] == "gpt-4-1106-preview"].head(50)
    src = source.set_index(["query_id", "model"])
    catalogue = load_catalogue()
    for _, row in copies.iterrows():
        origin = src.loc[(row["query_id"].split("~")[0], row["model"])]
        assert row["prompt"] != origin["prompt"] and row["prompt"].count("\n") == origin["prompt"].count("\n")
        assert row["quality"] == origin["quality"] or (np.isnan(row["quality"]) and np.isnan(origin["quality"]))
        repriced = origin["cost_usd"] + (row["prompt_tokens"] - origin["prompt_tokens"]) * \
            catalogue.get(row["model"]).input_price_per_token
        assert row["cost_usd"] == pytest.approx(max(repriced, 0.0))
    noisy = scale.synthesise(source, n_src + 300, 0, seed=0, noise=0.5, ts=ts)
    same = (noisy["quality"].to_numpy() == first["quality"].to_numpy()) | first["quality"].isna().to_numpy()
    copy = noisy["query_id"].str.contains("~").to_numpy()
    assert same[~copy].all() and 0.3 < 1 - same[copy].mean() < 0.7  # copy 0 is the source itself
