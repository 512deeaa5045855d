"""`ember manager|builder|notifier|flamelet|mldata run ...`: each service's own entry point.

Options after `run` go to the service unchanged (`ember flamelet run --node n1` is
`python -m ember.flamelet --node n1`); `ember <service> run --help` prints the service's options.
Both run through `ember.service.run_main`, so they exit with the same codes.
"""

from __future__ import annotations

import importlib

import typer

SERVICES = {
    "manager": "Job requests over MQTT and the job state machine (the event log's main writer).",
    "builder": "Builds a job's code + requirements into a runnable artifact, cached by content hash.",
    "notifier": "Places actors on nodes and publishes each node's desired state; re-places on node loss.",
    "flamelet": "The node agent: announces the node, runs the actors of its desired state, reports their states.",
    "mldata": "A node's data store: Arrow Flight server + MQTT ingestion of sensor readings.",
}
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def run_service(service: str, argv: list[str]) -> int:
    """Call `ember.<service>.__main__.main(argv)`; its exit code (`ember.service.run_main`)."""
    module_name = f"ember.{service}.__main__"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            typer.echo(f"error: the {service} service is not installed in this build of Ember", err=True)
            return 1
        raise
    return int(module.main(argv))


def add_service_commands(app: typer.Typer) -> None:
    """One `ember <service>` group with a `run` command per service."""
    for service, text in SERVICES.items():
        group = typer.Typer(help=text, no_args_is_help=True)

        def make(service: str = service):
            def run_cmd(ctx: typer.Context) -> None:
                raise typer.Exit(run_service(service, list(ctx.args)))

            run_cmd.__doc__ = (
                f"Run the {service} in the foreground (same as `python -m ember.{service}`); "
                f"every option is passed to it: `ember {service} run --help` lists them."
            )
            return run_cmd

        group.command("run", context_settings=PASSTHROUGH)(make())
        app.add_typer(group, name=service)
