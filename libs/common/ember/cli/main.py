"""The `ember` command: one group per file in this package; exit codes are listed in `ember --help`."""

from __future__ import annotations

import typer

from ember.cli import asyncapi, data, devices, job, node, provision, up
from ember.cli.common import EXIT_HELP
from ember.cli.services import add_service_commands
from ember.cli.ui import add_ui_command

app = typer.Typer(
    name="ember",
    help="Ember: federated-learning operations for the edge. The CLI talks to the manager over MQTT.",
    epilog=EXIT_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up", epilog=EXIT_HELP)(up.up)
app.add_typer(job.app, name="job", epilog=EXIT_HELP)
app.add_typer(node.app, name="node")
app.add_typer(data.app, name="data")
app.add_typer(devices.app, name="devices")
app.command("asyncapi")(asyncapi.asyncapi)
app.add_typer(provision.app, name="provision")
add_service_commands(app)
add_ui_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
