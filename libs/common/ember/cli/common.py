"""What every `ember` command shares: settings, the bus to the manager, errors -> exit codes, output.

The CLI speaks to the manager only over MQTT (`Bus.request`), like any other client.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ember.bus import Bus
from ember.errors import EmberError, RequestTimeout, Unavailable
from ember.settings import Settings

T = TypeVar("T")

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes, grouped: 0 ok; 1-6 errors (one per `ember.errors` class); 10-11 job outcomes.
EXIT_CODES: dict[int, str] = {
    0: "success (with --wait: the job succeeded)",
    1: "internal error",
    2: "invalid request, job spec or settings (each bad field is printed)",
    3: "not found (unknown job, node or file)",
    4: "conflict (e.g. cancelling a job that already ended)",
    5: "timeout: no manager answered (is `ember up` running?)",
    6: "unavailable: the MQTT broker or a node's mldata cannot be reached",
    10: "with --wait: the job failed",
    11: "with --wait: the job was cancelled",
    130: "interrupted (Ctrl-C)",
}
JOB_FAILED, JOB_CANCELLED = 10, 11
EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
TIMEOUT_OPTION = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for the manager's reply.")


def settings() -> Settings:
    """Settings from the environment (`EMBER_*`); the broker comes from `$EMBER_HOME/broker.json`."""
    return Settings.from_env()


def fail(exc: EmberError | str, code: int | None = None) -> NoReturn:
    """Print an error (with each field of an invalid spec) and exit with its exit code."""
    if isinstance(exc, str):
        err.print(f"[red]error:[/] {escape(exc)}")
        raise typer.Exit(code or 1)
    err.print(f"[red]error:[/] {escape(exc.message)}")
    details = exc.details if isinstance(exc.details, list) else []
    for detail in details:
        if isinstance(detail, dict) and "field" in detail:
            err.print(f"  [bold]{escape(str(detail['field']))}[/]: {escape(str(detail.get('reason', '')))}")
    raise typer.Exit(code or exc.exit_code)


@asynccontextmanager
async def connect(s: Settings | None = None, *, connect_timeout: float = 3.0) -> AsyncIterator[Bus]:
    """A connected Bus to the broker `ember up` recorded (or `EMBER_MQTT_URL`)."""
    s = s or settings()
    url = s.resolved_mqtt_url()
    bus = Bus(url, root=s.topic_root, source="ember-cli", keepalive=max(5, s.keepalive))
    try:
        await bus.start(wait=connect_timeout)
    except (Unavailable, OSError) as exc:
        await bus.shutdown()
        raise Unavailable(
            f"cannot reach the MQTT broker at {url}: start the stack with `ember up` "
            f"(or set EMBER_MQTT_URL / EMBER_HOME) [{exc}]"
        ) from None
    try:
        yield bus
    finally:
        await bus.shutdown()


async def call(bus: Bus, action: str, data: dict[str, Any] | None = None, *, timeout: float = 10.0) -> Any:
    """One request to the manager; a missing manager becomes a clear RequestTimeout."""
    try:
        return await bus.request(action, data or {}, timeout=timeout)
    except RequestTimeout:
        raise RequestTimeout(
            f"no manager answered '{action}' within {timeout:g}s on {bus.url}: is `ember up` (or `ember manager run`) running?"
        ) from None


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; EmberErrors exit with their code, Ctrl-C with 130."""
    try:
        return asyncio.run(main())
    except EmberError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def request(action: str, data: dict[str, Any] | None = None, *, timeout: float = 10.0) -> Any:
    """Connect, send one request, return its result (or exit with the error's code)."""

    async def main() -> Any:
        async with connect() as bus:
            return await call(bus, action, data, timeout=timeout)

    return run(main)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        t.add_column(column, overflow="fold")
    return t


def clock(iso: str | None) -> str:
    """`2025-01-01T12:00:01.234567+00:00` -> `12:00:01.234`."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return iso


def elapsed(start: str | None, end: str | None) -> str:
    try:
        delta = datetime.fromisoformat(end or "") - datetime.fromisoformat(start or "")
    except ValueError:
        return ""
    return f"+{delta.total_seconds():.3f}s"


STATE_STYLE = {
    "succeeded": "green",
    "exited": "green",
    "running": "cyan",
    "recovering": "magenta",
    "failed": "red",
    "lost": "red",
    "cancelled": "yellow",
    "offline": "red",
    "online": "green",
}


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state
