"""`ember up`: the whole local stack in one terminal (broker, control plane, N flamelets with mldata)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer

from ember.cli.common import err, fail
from ember.errors import EmberError
from ember.settings import ember_home


def up(
    flamelets: int = typer.Option(3, "--flamelets", "-n", min=0, max=64, help="Local worker nodes to start (node-1..N), each with its own mldata."),
    home: Path | None = typer.Option(None, "--home", help="Ember home (default: EMBER_HOME or ~/.ember): event log, broker, node data, logs."),
    mqtt_url: str | None = typer.Option(None, "--mqtt-url", envvar="EMBER_MQTT_URL", help="Use this broker instead of starting a private Mosquitto."),
    mqtt_port: int = typer.Option(0, "--mqtt-port", min=0, max=65535, help="Port of the private Mosquitto (default: a free one)."),
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds each process gets to stop on Ctrl-C/SIGTERM before SIGKILL."),
    no_mldata: bool = typer.Option(False, "--no-mldata", help="Do not start an mldata per node."),
    insecure: bool = typer.Option(
        False, "--insecure", envvar="EMBER_INSECURE",
        help="Run the private broker without authentication and ACL (anyone on this machine may submit jobs).",
    ),
    runtime: str = typer.Option("process", "--runtime", help="process, or docker: also start an image registry (unless EMBER_REGISTRY names one)."),
    ui_port: int = typer.Option(8765, "--ui-port", min=0, max=65535, help="Port of the web dashboard on 127.0.0.1 (0: a free one)."),
    no_ui: bool = typer.Option(False, "--no-ui", help="Do not start the web dashboard."),
) -> None:
    """Start a private Mosquitto, MLflow's tracking server, the manager, builder, notifier and N flamelets;
    restart any that crashes (with backoff); Ctrl-C stops them in order.

    Other `ember` commands find this stack (broker, tracking server) through `$EMBER_HOME/broker.json`,
    with no flags. Authentication and the ACL are on: identities are provisioned under
    `$EMBER_HOME/pki` on first start, and commands on this home connect as the local operator.
    """
    from ember.stack import Stack

    if runtime not in ("process", "docker"):
        raise typer.BadParameter(f"{runtime!r}: use process or docker", param_hint="--runtime")
    home = (home or ember_home()).expanduser().resolve()
    env = dict(os.environ, EMBER_HOME=str(home))
    stack = Stack(home, flamelets=flamelets, mqtt_url=mqtt_url, env=env, echo=sys.stdout, grace=grace, mldata=not no_mldata, mqtt_port=mqtt_port,
                  secure=not insecure, registry=runtime == "docker", ui=not no_ui, ui_port=ui_port)

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)  # a SIGTERM during start-up still shuts down in order
    try:
        stack.start()
    except KeyboardInterrupt:
        stack.stop()
        raise typer.Exit(130) from None
    except EmberError as exc:
        stack.stop()
        fail(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
    err.print(f"Ember is up. In another terminal: [bold]ember node list[/], [bold]ember job submit examples/probe/job.yaml --wait[/]  (EMBER_HOME={home}; MLflow: {stack.tracking_uri})")
    raise typer.Exit(stack.run_until_signal())
