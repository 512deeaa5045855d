"""Test helpers shared by Ember's tests and benchmarks: a private Mosquitto, condition waits."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run 'make install' or 'apt-get install mosquitto'")
    return found


def mosquitto_config(port: int, data_dir: Path) -> str:
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "message_size_limit 0",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


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
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def wait_for_port(host: str, port: int, *, timeout: float = 10.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


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
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s (last value: {last!r})")
        time.sleep(interval)
