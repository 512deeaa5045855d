"""`ember ui [--port P] [--host H] [--mlflow-ui URL]`: the web dashboard in the foreground."""

from __future__ import annotations

import typer

from ember.cli.services import PASSTHROUGH, run_service

HELP = "The web dashboard (nodes, jobs, rounds, logs) on http://127.0.0.1:8765/; `ember ui --help` lists its options."


def add_ui_command(app: typer.Typer) -> None:
    def ui(ctx: typer.Context) -> None:
        raise typer.Exit(run_service("ui", list(ctx.args)))

    ui.__doc__ = HELP
    app.command("ui", context_settings=PASSTHROUGH, help=HELP)(ui)
