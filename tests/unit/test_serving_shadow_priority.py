"""`MIXLLM_SHADOW_PRIORITY`: the shadow process runs at SCHED_IDLE ("idle", the default) or nice 19 ("nice", for a
machine shared with batch jobs), and nothing else is accepted. Each priority is applied in a fresh interpreter (a
lowered priority cannot be raised back, so never in the test process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from mixllm.serving.settings import ServingSettings

pytestmark = pytest.mark.unit

PROBE = ("import os; from mixllm.serving.settings import ServingSettings; "
         "from mixllm.serving.shadow_worker import apply_priority; "
         "p = apply_priority(ServingSettings()); "
         "print(p, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))")


def _applied(priority: str | None) -> tuple[str, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "MIXLLM_SHADOW_PRIORITY"}
    if priority is not None:
        env["MIXLLM_SHADOW_PRIORITY"] = priority
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_the_default_is_sched_idle() -> None:
    policy, nice, scheduler = _applied(None)
    assert nice == 19
    # SCHED_IDLE where the OS allows it; the fallback is nice 19 alone, and says so
    assert (policy, scheduler) in {("idle", os.SCHED_IDLE), ("nice", os.SCHED_OTHER)}


def test_nice_keeps_the_normal_scheduler_at_nice_19() -> None:
    assert _applied("nice") == ("nice", 19, os.SCHED_OTHER)


def test_an_unknown_priority_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_SHADOW_PRIORITY", "realtime")
    with pytest.raises(ValidationError, match="shadow_priority"):
        ServingSettings()
