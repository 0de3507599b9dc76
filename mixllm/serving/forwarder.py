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
    # Lowest CPU priority: on a small machine the forwarder's bursts would otherwise take a core from the
    # encoder's thread team mid forward pass (a /route p99 spike); it catches up whenever a core is idle.
    os.nice(19)
    from mixllm.store import Store

    url = os.environ.get(FORWARDER_STORE_ENV) or None
    box = Outbox(args.spool, lambda: Store(url), args.interval, args.batch, args.ttl)
    box._in_child = True
    box.serve_forwarder(args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
