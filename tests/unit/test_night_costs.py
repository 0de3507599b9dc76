"""What makes a night cost what is new (issue 16) without changing what it computes: the router's text view of a
log (canonical order, training-data digest) equals `astype(str)` cell for cell; the PCA axes from the Gram matrix
span what the SVD's do; the snapshot's MLflow dataset has the schema and profile MLflow infers from every row; the
Bento build deletes an existing tag only."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mixllm.delivery import _bento_in_store
from mixllm.registry import _dataset, schema_rows
from mixllm.router import _as_text, canonical_rows, principal_axes

pytestmark = pytest.mark.unit


def _typed_log(n: int = 60) -> pd.DataFrame:
    """Rows typed as the store returns them (string, float, nullable Int64, UTC timestamps, object), with gaps."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "query_id": pd.array([f"q{i % 20}" for i in range(n)], dtype="string"),
        "prompt": pd.array([f"prompt {i % 20} " * (1 + i % 3) for i in range(n)], dtype="string"),
        "model": pd.array([f"m{i % 3}" for i in range(n)], dtype="string"),
        "quality": rng.integers(0, 2, n).astype(float), "cost_usd": rng.random(n) * 1e-3,
        "prompt_tokens": pd.array(rng.integers(5, 50, n), dtype="Int64"),
        "task": pd.array(["a", "b", None] * (n // 3), dtype="string"),
        "ts": pd.to_datetime(["2026-12-01", "2026-12-02"] * (n // 2), utc=True),
        "router_version": [None, "v1", None, None] * (n // 4), "propensity": [np.nan, 0.5, 1.0] * (n // 3)})
    df.loc[3, "quality"], df.loc[4, "prompt_tokens"], df.loc[5, "ts"], df.loc[6, "cost_usd"] = np.nan, pd.NA, \
        pd.NaT, -0.0
    return df


def test_text_view_hashes_as_astype_str() -> None:
    df = _typed_log()
    hashed = pd.util.hash_pandas_object(_as_text(df), index=False).to_numpy()
    assert np.array_equal(hashed, pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy())
    shuffled = df.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(canonical_rows(shuffled), canonical_rows(df))


def test_principal_axes_span_the_svd_axes_and_are_deterministic() -> None:
    x = np.random.default_rng(1).standard_normal((300, 24))
    x[:, 0] *= 5.0  # distinct leading variances: each axis is defined up to its sign
    x[:, 1] *= 3.0
    mean = x.mean(0)
    axes = principal_axes(x, mean)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    assert axes.shape == vt.shape
    assert np.allclose(np.abs(np.sum(axes[:4] * vt[:4], axis=1)), 1.0, atol=1e-9)
    assert np.array_equal(principal_axes(x.copy(), mean.copy()), axes)
    assert principal_axes(x[:5], x[:5].mean(0)).shape == (5, 24)  # fewer rows than dimensions: thin SVD's shape


def test_snapshot_dataset_schema_and_profile_as_mlflow_infers_them() -> None:
    df = _typed_log()
    df["router_version"] = None  # a column that is null in every row
    ours = _dataset(df, "snapshot-x", "d" * 36)
    ints = [c for c in df.columns if pd.api.types.is_integer_dtype(df[c].dtype)]
    theirs = mlflow.data.from_pandas(df.astype({c: "float64" for c in ints}), name="snapshot-x", digest="d" * 36)
    assert ours.to_dict() == theirs.to_dict()  # name, digest, source, schema, profile
    assert len(schema_rows(df)) < len(df)


def test_bento_delete_only_when_the_tag_is_in_the_store(tmp_path: Path) -> None:
    env = {"BENTOML_HOME": str(tmp_path)}
    assert not _bento_in_store(env, "mixllm-router", "3")
    (tmp_path / "bentos" / "mixllm-router" / "v3").mkdir(parents=True)
    assert _bento_in_store(env, "mixllm-router", "3") and _bento_in_store({}, "mixllm-router", "4")
