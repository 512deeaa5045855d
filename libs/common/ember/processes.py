"""Named OS processes run side by side: start, prefix and log their output, signal, stop in groups,
restart the ones that crash.

The generic half of `ember.stack` (which knows what Ember's processes are). Blocking work
(Popen, wait, pipes), so it is synchronous, with one output thread per process. Also the two
helpers a process launcher needs: a free port to give a server, and waiting until it listens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_COLORS = ("36", "35", "33", "32", "34", "91", "96", "95", "93", "92")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(process: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """Stop `process` if it runs: SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Call `condition` until it returns something true (returned); TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s (last value: {last!r})")
        time.sleep(interval)


def wait_for_port(host: str, port: int, *, timeout: float = 10.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Return once `host:port` accepts connections; raise if `process` exits first or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a crashed process after `initial` seconds, doubling per restart still inside
    `window` (capped at `cap`); after `max_restarts` restarts inside `window`, give up on it."""

    initial: float = 0.5
    cap: float = 30.0
    max_restarts: int = 5
    window: float = 120.0

    def delay(self, recent: int) -> float:
        return min(self.cap, self.initial * 2**recent)


@dataclass
class Proc:
    """One process of a group: how to start it, and the running instance."""

    name: str
    argv: list[str]
    env: dict[str, str]
    group: int
    """Shutdown order: higher groups stop first."""
    popen: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    starts: int = 0
    expected_exit: bool = False
    restarts: deque[float] = field(default_factory=deque)
    """When it was restarted after crashes (monotonic clock), within the policy's window."""
    restart_at: float | None = None
    gave_up: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class ProcessGroup:
    """Named processes whose output goes to `<log_dir>/<name>.log` and, if `echo`, prefixed to `echo`."""

    def __init__(self, log_dir: Path, *, cwd: Path, echo: IO[str] | None = None, color: bool = False, grace: float = 10.0) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.echo = echo
        self.color = color
        self.grace = grace
        self.procs: dict[str, Proc] = {}
        self._lock = threading.Lock()

    def add(self, name: str, argv: list[str], env: dict[str, str], *, group: int) -> Proc:
        self.procs[name] = Proc(name, argv, env, group)
        return self.procs[name]

    def spawn(self, proc: Proc) -> None:
        """Start (or start again) one process in its own session, its output pumped by a thread."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if proc.popen is not None:
            _kill_leftovers(proc.popen)
        proc.expected_exit = False
        proc.restart_at = None
        proc.starts += 1
        proc.popen = subprocess.Popen(
            proc.argv,
            env=proc.env,
            cwd=str(self.cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this process only; it stops children in order
        )
        color = _COLORS[list(self.procs).index(proc.name) % len(_COLORS)]
        proc.pump = threading.Thread(target=self._pump, args=(proc, proc.popen, color), name=f"pump:{proc.name}", daemon=True)
        proc.pump.start()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def tail(self, name: str, lines: int = 20) -> str:
        """The last lines a process printed (from its log file)."""
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def say(self, who: str, text: str) -> None:
        if self.echo is not None:
            with self._lock, contextlib.suppress(ValueError, OSError):
                self.echo.write(f"{who} │ {text}\n")
                self.echo.flush()

    def kill(self, name: str, sig: int, *, timeout: float = 30.0) -> int:
        """Send `sig` to one process and wait for it to exit; returns its exit status."""
        proc = self.procs[name]
        if not proc.alive():
            return proc.popen.returncode if proc.popen else 0
        assert proc.popen is not None
        proc.expected_exit = True
        proc.popen.send_signal(sig)
        code = proc.popen.wait(timeout)
        if proc.pump:
            proc.pump.join(5)
        return code

    def exited(self) -> dict[str, int]:
        """Processes that exited without being asked to: name -> exit status."""
        return {
            p.name: p.popen.returncode
            for p in self.procs.values()
            if p.popen is not None and p.popen.poll() is not None and not p.expected_exit
        }

    def supervise(self, policy: RestartPolicy, now: float | None = None) -> None:
        """One pass: schedule a restart (with backoff) of each process that exited unexpectedly,
        start those that are due, give up on crash loops; each step is said on `echo`."""
        now = time.monotonic() if now is None else now
        for name, code in self.exited().items():
            proc = self.procs[name]
            if proc.gave_up:
                continue
            while proc.restarts and now - proc.restarts[0] > policy.window:
                proc.restarts.popleft()
            if proc.restart_at is None:
                if len(proc.restarts) >= policy.max_restarts:
                    proc.gave_up = True
                    self.say("stack", f"{name} exited with status {code} after {len(proc.restarts)} restarts within "
                                      f"{policy.window:g}s: giving up on it (its log: {self.log_path(name)})")
                    continue
                delay = policy.delay(len(proc.restarts))
                proc.restart_at = now + delay
                self.say("stack", f"{name} exited with status {code}: restarting it in {delay:g}s "
                                  f"(restart {len(proc.restarts) + 1} of at most {policy.max_restarts} within {policy.window:g}s)")
            elif now >= proc.restart_at:
                proc.restarts.append(now)
                self.spawn(proc)
                self.say("stack", f"{name} restarted (pid {proc.pid})")

    def stop_group(self, procs: Iterable[Proc]) -> None:
        """SIGTERM every process of the group, wait up to the grace, SIGKILL what is left."""
        running = [p for p in procs if p.alive()]
        for p in running:
            p.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                p.popen.terminate()  # type: ignore[union-attr]
        for p in running:
            assert p.popen is not None
            try:
                p.popen.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.say("stack", f"{p.name} did not stop within {self.grace:g}s: SIGKILL")
                p.popen.kill()
                p.popen.wait()
        for p in running:
            if p.pump:
                p.pump.join(5)

    def stop_all(self) -> None:
        """Every group in turn, highest first; then what is left of any that had exited."""
        for group in sorted({p.group for p in self.procs.values()}, reverse=True):
            self.stop_group([p for p in self.procs.values() if p.group == group])
        for p in self.procs.values():
            if p.popen is not None:
                _kill_leftovers(p.popen)

    def _pump(self, proc: Proc, popen: subprocess.Popen[bytes], color: str) -> None:
        assert popen.stdout is not None
        width = max(map(len, list(self.procs)), default=8)  # a copy: other threads add processes
        with open(self.log_path(proc.name), "ab") as log:
            for raw in iter(popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                if self.echo is not None:
                    line = raw.decode(errors="replace").rstrip("\n")
                    prefix = f"{proc.name:<{width}} │ "
                    if self.color:
                        prefix = f"\x1b[{color}m{prefix}\x1b[0m"
                    with self._lock, contextlib.suppress(ValueError, OSError):
                        self.echo.write(prefix + line + "\n")
                        self.echo.flush()
        popen.stdout.close()


def _kill_leftovers(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of an exited process's group (e.g. the worker of a server whose
    parent was killed, still holding its port); each process leads its own session and group."""
    if popen.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
