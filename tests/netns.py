"""Test hosts made of Linux network namespaces: several "machines" on one, for tests of what crosses a
network (DESIGN.md, "Across hosts").

Each host is a namespace with its own loopback and one veth link to a bridge that lives in a namespace
of its own (the switch), so the root namespace gets no address and no route to the test network: the
hosts reach each other and nothing else. Addresses come from a /24 inside the test network only.

    with Network("emb", ["hub", "node-1"]) as net:
        broker = net["hub"].popen(["mosquitto", "-c", conf])
        net["node-1"].link_down()          # partition node-1
        net["node-1"].rate_limit(20)       # 20 Mbit/s uplink (tc tbf)

Everything is torn down when the block ends, whatever happened in it: processes started through
`popen` are killed by process group, then every namespace is deleted (which removes its links).
Needs root and `ip netns`; `available()` says whether this machine allows it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SUBNET = "10.213.{net}.{host}"
"""Addresses of the test network; `net` is chosen per Network so concurrent runs do not collide."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"embprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "iproute2's `ip` is not installed"
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One namespace with an address on the test network."""

    name: str
    """The namespace's name (unique on the machine)."""
    address: str
    link: str
    """The switch-side end of this host's veth: taking it down partitions the host."""
    switch: str
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside this host, in its own process group; it is killed at teardown."""
        process = subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def link_down(self) -> None:
        _ip("-n", self.switch, "link", "set", self.link, "down")

    def link_up(self) -> None:
        _ip("-n", self.switch, "link", "set", self.link, "up")

    def rate_limit(self, mbit: float, *, burst_kb: int = 32, latency_ms: int = 50) -> None:
        """Limit this host's link to `mbit` Mbit/s in both directions (token bucket on each end)."""
        rate = f"{mbit}mbit"
        for namespace, device in ((self.name, "eth0"), (self.switch, self.link)):
            _ip("netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root", "tbf",
                "rate", rate, "burst", f"{burst_kb}kb", "latency", f"{latency_ms}ms")

    def counters(self) -> tuple[int, int]:
        """(bytes received, bytes sent) on this host's link since it was made."""
        base = "/sys/class/net/eth0/statistics"
        done = self.run(["cat", f"{base}/rx_bytes", f"{base}/tx_bytes"], check=True)
        rx, tx = (int(v) for v in done.stdout.split())
        return rx, tx

    def stop_processes(self, grace: float = 5.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=grace)
        self.processes.clear()


class Network:
    """A bridge in a switch namespace and one namespace per host, torn down on exit."""

    def __init__(self, prefix: str, hosts: Sequence[str]) -> None:
        self.tag = f"{prefix}{os.getpid() % 10000}"
        self.net = os.getpid() % 250 + 1
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._names = list(hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            _ip("-n", self.switch, "link", "set", "lo", "up")
            for index, name in enumerate(self._names, start=1):
                self.add(name, index)
        except BaseException:
            self.close()
            raise
        return self

    def add(self, name: str, index: int) -> Host:
        namespace = f"{self.tag}-{name}"
        link = f"v{index}"  # switch side; interface names must stay under 16 characters
        address = SUBNET.format(net=self.net, host=index)
        _ip("netns", "add", namespace)
        host = Host(name=namespace, address=address, link=link, switch=self.switch)
        self.hosts[name] = host
        _ip("-n", self.switch, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", link, "master", "br0")
        _ip("-n", self.switch, "link", "set", link, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop_processes()
        for host in self.hosts.values():
            _ip("netns", "del", host.name, check=False)
        _ip("netns", "del", self.switch, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def network(prefix: str, hosts: Sequence[str]) -> Iterator[Network]:
    with Network(prefix, hosts) as net:
        yield net
