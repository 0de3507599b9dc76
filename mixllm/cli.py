"""The `mixllm` command line (Typer). Scripts depend on these commands: keep names and flags stable.

Each command imports its stage module inside the function, so `mixllm --help` never pays for torch or MLflow.
Errors the library raises on purpose (`MixLLMError`) are printed as one line and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from mixllm.exceptions import MixLLMError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="mixllm: route every query to the LLM with the best answer per dollar.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The nightly pipeline (Prefect): run once or schedule.")
app.add_typer(pipeline_app, name="pipeline")


# ---------------------------------------------------------------- data: ingest, quarantine (store.py) --------


# ---------------------------------------------------------------- router: train, route (router.py) -----------


# ---------------------------------------------------------------- evaluation: evaluate (evaluation.py) -------


# ---------------------------------------------------------------- registry: pipeline, promote, rollback ------


# ---------------------------------------------------------------- service: serve (bento/) --------------------


def main() -> None:
    """Console-script entry point: offline switches first, then one-line errors for `MixLLMError`."""
    from mixllm.telemetry import go_offline

    go_offline()
    try:
        app()
    except MixLLMError as e:
        typer.echo(f"mixllm: error: {e}", err=True)
        sys.exit(2)
