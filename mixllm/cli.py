"""The `mixllm` command line (Typer). Placeholder root; stage commands are added per module."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mixllm: route every query to the best LLM per dollar.")


def main() -> None:
    from mixllm.telemetry import go_offline

    go_offline()
    app()
