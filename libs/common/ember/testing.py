"""Test support shared by Ember's tests and benchmarks: a private Mosquitto, condition waits.

Private to tests/ and bench/: production code never imports it (tests/test_layering.py checks).
The broker runs with the production config (`ember.broker.mosquitto_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.broker import mosquitto_binary, mosquitto_config
from ember import processes
from ember.processes import free_port, terminate, wait_for_port

__all__ = ["Broker", "assert_eventually", "free_port", "private_broker", "wait_for_port", "wait_until"]


@dataclass
class Broker:
    """A private Mosquitto process on a free port."""

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Broker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(mosquitto_config(self.port, self.workdir))
        log = open(self.workdir / "mosquitto.log", "ab")
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        wait_for_port(self.host, self.port, timeout=10, process=self.process)
        return self

    def stop(self) -> None:
        terminate(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_broker() -> Iterator[Broker]:
    with tempfile.TemporaryDirectory(prefix="ember-mqtt-") as tmp:
        broker = Broker("127.0.0.1", free_port(), Path(tmp)).start()
        try:
            yield broker
        finally:
            broker.stop()


async def assert_eventually(
    condition: Callable[[], Any | Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> Any:
    """Wait until `condition()` is truthy (it may be async); fail with `message` after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = condition()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Synchronous `assert_eventually` for tests that drive subprocesses."""
    try:
        return processes.wait_until(condition, timeout=timeout, interval=interval, message=message)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
