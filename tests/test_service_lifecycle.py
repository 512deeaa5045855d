"""One service lifecycle: the `ember.service.Service` base, then every service as a real process.

The processes run against a private Mosquitto; each test starts all five services at once so the
suite pays one start-up, not five.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from ember.errors import InvalidSettings, Unavailable
from ember.service import EXIT_CRASHED, LoopEnded, Service, run_main
from ember.settings import Settings
from ember.testing import Broker, assert_eventually, free_port, wait_until

pytestmark = pytest.mark.timeout(60)

SERVICES = ("manager", "builder", "notifier", "flamelet", "mldata")


# --- the base class, in process ------------------------------------------------------------------


class Boom(Exception):
    pass


class Toy(Service):
    """A service whose loops and in-flight work the test drives through events."""

    name = "toy"

    def __init__(self, *, grace: float | None = 5.0, fail_open: BaseException | None = None) -> None:
        super().__init__(grace=grace)
        self.fail_open = fail_open
        self.blocked_open = asyncio.Event()
        self.open_released = asyncio.Event()
        self.open_released.set()
        self.bomb = asyncio.Event()
        self.quit = asyncio.Event()
        self.work_done = asyncio.Event()
        self.in_flight = False
        self.events: list[str] = []

    async def open(self) -> None:
        self.events.append("open")
        self.blocked_open.set()
        await self.open_released.wait()
        if self.fail_open is not None:
            raise self.fail_open

    def loops(self) -> dict[str, Any]:
        return {"ticker": self._ticker(), "bomb": self._bomb(), "quitter": self._quitter()}

    async def _ticker(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append("ticker cancelled")
            raise

    async def _bomb(self) -> None:
        await self.bomb.wait()
        raise Boom("the bomb loop raised")

    async def _quitter(self) -> None:
        await self.quit.wait()  # returns: a loop that ends on its own

    async def drain(self) -> None:
        self.events.append("drain")
        if self.in_flight:
            await self.work_done.wait()
            self.events.append("work finished")

    def abandon(self) -> None:
        self.events.append("abandon")

    async def close(self) -> None:
        self.events.append("close")


async def test_a_loop_that_raises_stops_the_others_and_its_error_surfaces():
    toy = Toy()
    async with toy:
        toy.bomb.set()
        with pytest.raises(Boom, match="the bomb loop raised"):
            await toy.wait_stopped()
    assert toy.fatal is not None and isinstance(toy.fatal, Boom)
    assert "ticker cancelled" in toy.events and toy.events[-1] == "close"
    assert "drain" not in toy.events, "a dead service does not wait for work that may depend on the dead loop"


async def test_a_loop_that_ends_on_its_own_is_fatal_too_even_if_nobody_waits():
    toy = Toy()
    with pytest.raises(LoopEnded, match="quitter"):
        async with toy:
            toy.quit.set()
            await assert_eventually(lambda: toy.fatal is not None)
    assert toy.events[-1] == "close"


async def test_shutdown_is_idempotent_and_concurrent_callers_share_it():
    toy = Toy()
    async with toy:
        await asyncio.gather(toy.shutdown(), toy.shutdown(), toy.shutdown())
        await toy.shutdown()
    assert toy.events.count("drain") == 1 and toy.events.count("close") == 1
    assert toy.fatal is None


async def test_in_flight_work_gets_its_grace_period():
    toy = Toy(grace=30)
    async with toy:
        toy.in_flight = True
        stopping = asyncio.create_task(toy.shutdown())
        await assert_eventually(lambda: "drain" in toy.events)
        assert "ticker cancelled" not in toy.events and "close" not in toy.events, "the loops serve while draining"
        toy.work_done.set()
        await stopping
    assert toy.events[-3:] == ["work finished", "ticker cancelled", "close"]
    assert "abandon" not in toy.events


async def test_work_still_in_flight_when_the_grace_period_ends_is_abandoned():
    toy = Toy(grace=0.05)
    async with toy:
        toy.in_flight = True
    assert toy.events[-3:] == ["abandon", "ticker cancelled", "close"]
    assert "work finished" not in toy.events and toy.fatal is None


async def test_a_stop_requested_during_start_up_ends_it_cleanly():
    toy = Toy()
    toy.open_released.clear()  # open() hangs, as a connect to an absent broker does
    starting = asyncio.create_task(toy.__aenter__())
    await toy.blocked_open.wait()
    toy.request_stop()
    await starting
    await toy.wait_stopped()
    await toy.__aexit__(None, None, None)
    assert toy.events == ["open", "abandon", "close"] and toy.fatal is None


async def test_a_failed_open_closes_what_it_opened_and_raises():
    toy = Toy(fail_open=Unavailable("no broker"))
    with pytest.raises(Unavailable, match="no broker"):
        async with toy:
            pass
    assert toy.events == ["open", "abandon", "close"]


# --- run_main's exit codes, in process -----------------------------------------------------------


@pytest.fixture
def clean_log_context():
    yield
    structlog.contextvars.clear_contextvars()


def test_run_main_exit_codes(clean_log_context, capsys):
    settings = Settings.from_env({}, log_format="json")

    class StopsAtOnce(Toy):
        async def open(self) -> None:
            self.request_stop()

    class Crashes(Toy):
        async def open(self) -> None:
            self.bomb.set()

    class Unreachable(Toy):
        async def open(self) -> None:
            raise Unavailable("cannot reach the MQTT broker")

    def invalid() -> Settings:
        return Settings.from_env({}, mqtt_url="http://nowhere")

    assert run_main("toy", lambda: settings, lambda _: StopsAtOnce()) == 0
    assert run_main("toy", lambda: settings, lambda _: Unreachable()) == Unavailable.exit_code == 6
    assert run_main("toy", invalid, lambda _: StopsAtOnce()) == InvalidSettings.exit_code == 2
    assert run_main("toy", lambda: settings, lambda _: Crashes()) == EXIT_CRASHED == 1
    err = capsys.readouterr().err
    assert "ember toy: invalid settings" in err and "unsupported MQTT URL scheme" in err
    crashed = [json.loads(line) for line in err.splitlines() if '"toy.crashed"' in line]
    assert crashed and "Boom: the bomb loop raised" in crashed[0]["exception"], "a crash is logged with its traceback"


# --- every service as a real process -------------------------------------------------------------


@dataclass
class Proc:
    service: str
    popen: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def logged(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines())

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


ARGV = {"flamelet": ["--node", "n1"], "mldata": ["--port", "0", "--host", "127.0.0.1", "--node", "n1"]}


def start(service: str, home: Path, mqtt_url: str, argv: list[str] | None = None, **env: str) -> Proc:
    """`python -m ember.<service>` with its own home and a JSON log file."""
    home.mkdir(parents=True, exist_ok=True)
    argv = ARGV.get(service, []) if argv is None else argv
    environ = {**os.environ, "EMBER_HOME": str(home), "EMBER_MQTT_URL": mqtt_url, "EMBER_LOG_FORMAT": "json", **env}
    log = home / f"{service}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", f"ember.{service}", *argv], env=environ, stdout=out, stderr=out)
    return Proc(service, popen, log)


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_service_exits_0_on_a_stop_signal_once_it_is_up(mqtt_broker: Broker, tmp_path: Path, sig: signal.Signals):
    procs = [start(service, tmp_path / service, mqtt_broker.url) for service in SERVICES]
    try:
        for proc in procs:
            wait_until(lambda proc=proc: proc.logged(f"{proc.service}.started") or proc.popen.poll() is not None, timeout=60,
                       message=f"{proc.service} never started")
            assert proc.popen.poll() is None, proc.tail()
        for proc in procs:
            proc.popen.send_signal(sig)
        for proc in procs:
            assert proc.popen.wait(30) == 0, proc.tail()
            events = [line["event"] for line in proc.lines()]
            name = proc.service
            assert events.index(f"{name}.stopping") < events.index(f"{name}.stopped"), events
            assert not any(e.endswith((".crashed", ".failed", ".loop_died")) for e in events), proc.tail()
    finally:
        stop_all(procs)


@pytest.mark.timeout(120)
def test_services_given_bad_settings_exit_2(tmp_path: Path):
    procs = [start(service, tmp_path / service, "http://not-a-broker") for service in SERVICES]
    procs.append(start("flamelet", tmp_path / "no-node", "mqtt://127.0.0.1:1883", argv=[], EMBER_NODE_ID=""))
    try:
        for proc in procs:
            assert proc.popen.wait(30) == InvalidSettings.exit_code == 2, proc.tail()
        assert "invalid settings" in procs[0].tail() and "unsupported MQTT URL scheme" in procs[0].tail()
        assert any(line.get("event") == "flamelet.failed" and "node id" in line["error"] for line in procs[-1].lines()), procs[-1].tail()
    finally:
        stop_all(procs)


@pytest.mark.timeout(120)
def test_an_unreachable_broker_stops_the_control_plane_with_6_and_nodes_wait_for_it(tmp_path: Path):
    """The manager and the builder need the broker to start (exit 6, `unavailable`); the notifier
    and the flamelet wait for it, and a SIGTERM meanwhile stops them cleanly."""
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    failing = [start(service, tmp_path / service, nowhere) for service in ("manager", "builder")]
    waiting = [start(service, tmp_path / service, nowhere) for service in ("notifier", "flamelet")]
    try:
        for proc in waiting:
            wait_until(lambda proc=proc: proc.logged("bus.disconnected"), timeout=60, message=f"{proc.service} never tried the broker")
            proc.popen.send_signal(signal.SIGTERM)
        for proc in waiting:
            assert proc.popen.wait(30) == 0, proc.tail()
            assert not proc.logged(f"{proc.service}.started") and proc.logged(f"{proc.service}.stopped")
        for proc in failing:
            assert proc.popen.wait(60) == Unavailable.exit_code == 6, proc.tail()
            [failed] = [line for line in proc.lines() if line.get("event") == f"{proc.service}.failed"]
            assert failed["code"] == "unavailable" and "cannot reach the MQTT broker" in failed["error"]
    finally:
        stop_all([*failing, *waiting])
