"""PipelineConfig's typed learning-loop settings: `feedback` (mixllm.feedback.FeedbackConfig) and `ope`
(mixllm.ope.OPEConfig) validated at construction and overridable from the environment, a YAML file and keyword
overrides, nested key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixllm.exceptions import ConfigError
from mixllm.feedback import FeedbackConfig
from mixllm.ope import OPEConfig
from mixllm.pipeline import PipelineConfig, load_pipeline_config

pytestmark = pytest.mark.unit


def test_defaults_are_the_typed_configs() -> None:
    cfg = PipelineConfig()
    assert cfg.feedback == FeedbackConfig() and cfg.ope == OPEConfig()
    assert cfg.feedback.max_labels_per_source is None


def test_environment_then_file_then_overrides_nested_key_by_key(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_PIPELINE_FEEDBACK__MAX_LABELS_PER_SOURCE", "50")
    monkeypatch.setenv("MIXLLM_PIPELINE_OPE", '{"ci": "bootstrap", "n_boot": 200}')
    env = load_pipeline_config()
    assert env.feedback.max_labels_per_source == 50 and (env.ope.ci, env.ope.n_boot) == ("bootstrap", 200)
    f = tmp_path / "p.yaml"
    f.write_text("feedback:\n  mapping: {graded: threshold}\nope:\n  n_boot: 500\n  clip: 20\n")
    cfg = load_pipeline_config(f)
    assert cfg.feedback.max_labels_per_source == 50 and cfg.feedback.mapping.graded == "threshold"
    assert (cfg.ope.ci, cfg.ope.n_boot, cfg.ope.clip) == ("bootstrap", 500, 20.0)
    over = load_pipeline_config(f, feedback={"max_labels_per_source": 7}, ope=OPEConfig(reward="quality"))
    assert over.feedback.max_labels_per_source == 7 and over.feedback.mapping.graded == "threshold"
    assert over.ope == OPEConfig(reward="quality")  # an object replaces the whole entry


@pytest.mark.parametrize("text", ["feedback:\n  max_labels_per_source: 0\n", "feedback:\n  cap: 3\n",
                                  "ope:\n  ci: jackknife\n", "feedback:\n  mapping: {up: 0, down: 1}\n"])
def test_invalid_learning_loop_settings_are_config_errors(tmp_path: Path, text: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_pipeline_config(f)


def test_invalid_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_PIPELINE_FEEDBACK__MAX_LABELS_PER_SOURCE", "-1")
    with pytest.raises(ConfigError):
        load_pipeline_config()
