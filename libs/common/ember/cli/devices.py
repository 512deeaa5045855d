"""`ember devices mock`: a fleet of simulated edge machines sending readings to a node."""

from __future__ import annotations

import asyncio
from enum import StrEnum

import typer

from ember.cli.common import console, fail, settings
from ember.errors import InvalidRequest, Unavailable

app = typer.Typer(help="Edge devices (mock fleets for demos and tests).", no_args_is_help=True)


class Transport(StrEnum):
    mqtt = "mqtt"
    flight = "flight"


@app.command()
def mock(
    devices: int = typer.Option(4, "--devices", "-d", min=1, help="Number of simulated machines."),
    rate: float = typer.Option(1.0, "--rate", "-r", min=0, help="Readings per second per device; 0 replays history as fast as possible."),
    duration: float = typer.Option(60.0, "--duration", min=0, help="Seconds of wall time (live) or of history (rate 0)."),
    tag: str = typer.Option("sensors", "--tag", "-t", help="Data tag the readings are sent under."),
    node: str = typer.Option("node-1", "--node", "-n", help="Node the fleet belongs to (seeds its machines; Flight target)."),
    transport: Transport = typer.Option(Transport.mqtt, "--transport", help="mqtt: batches on data/{tag}; flight: do_put to the node's mldata."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulator (readings are deterministic per node and seed)."),
    mqtt_url: str | None = typer.Option(None, "--mqtt-url", help="Broker (default: the one `ember up` recorded, or EMBER_MQTT_URL)."),
    flight_url: str | None = typer.Option(None, "--flight-url", help="mldata Flight URL (default: the local stack's mldata of --node)."),
    token: str | None = typer.Option(None, "--token", envvar="EMBER_MLDATA_TOKEN", help="mldata token for --transport flight."),
) -> None:
    """Simulate DEVICES machines of NODE and send their readings under TAG; prints how many were accepted."""
    from ember.cli.data import local_nodes
    from ember.devices.mock import run_mock

    s = settings()
    if transport == Transport.flight and (flight_url is None or token is None):
        state = local_nodes().get(node)
        if state is None:
            fail(Unavailable(f"no local mldata for {node}: pass --flight-url and --token"))
        flight_url = flight_url or state["url"]
        token = token or state["token"]
    try:
        sent = asyncio.run(
            run_mock(
                devices=devices,
                rate=rate,
                duration=duration,
                tag=tag,
                node=node,
                transport=transport.value,
                seed=seed,
                mqtt_url=mqtt_url or s.resolved_mqtt_url(),
                flight_url=flight_url or "grpc://127.0.0.1:8815",
                token=token,
                topic_root=s.topic_root,
            )
        )
    except ValueError as exc:
        fail(InvalidRequest(str(exc)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # broker or Flight unreachable
        fail(Unavailable(f"sending readings failed: {exc}"))
    console.print(f"{sent} readings accepted ({devices} devices of {node}, tag {tag}, {transport.value})")
