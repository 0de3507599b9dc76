"""The service's outbox forwarder process: ``python -m mixllm.serving.forwarder SPOOL`` (started by
`Outbox.start(store_url=...)`; the store URL comes in the environment, never in argv)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mixllm.serving.outbox import Outbox
from mixllm.serving.settings import FORWARDER_STORE_ENV


def lowest_priority() -> str:
    """Run this process only on CPU time nothing else wants: SCHED_IDLE where the OS has it, else nice 19.

    Why: the encoder's thread team needs both cores of a small machine for every forward pass, and a forwarding
    round (~2-5 ms of Python per batch) that takes one of them stalls the pass (a /route p99 spike). Nice 19 is not
    enough on Linux: a running nice-19 task keeps the core until its slice ends (~1.5-3 ms) when an encoder thread
    wakes; a SCHED_IDLE task is preempted at once. It still gets every idle moment, so the spool drains between
    requests; what a saturated service leaves in it is delivered later (rows leave the spool only once stored).
    Returns the policy applied."""
    os.nice(19)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):  # not Linux, or not permitted: nice 19 only
        return "nice"


def main(argv: Sequence[str] | None = None) -> int:
    """Forward a spool to the store until SIGTERM, or until the service that started it is gone."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mixllm.serving.forwarder",
                                     description="Forward a service outbox spool to the store until SIGTERM.")
    parser.add_argument("spool", type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--ttl", type=float, default=7 * 86400)
    parser.add_argument("--parent", type=int, default=None, help="exit once this process is no longer our parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s mixllm.forwarder %(levelname)s %(message)s")
    lowest_priority()
    from mixllm.store import Store

    url = os.environ.get(FORWARDER_STORE_ENV) or None
    box = Outbox(args.spool, lambda: Store(url), args.interval, args.batch, args.ttl)
    box._in_child = True
    box.serve_forwarder(args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
