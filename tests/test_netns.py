"""The network-namespace test hosts themselves: hosts reach each other, the root namespace holds none of
their addresses, a link taken down partitions its host, and a rate limit holds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ember.testing import wait_until
from tests import netns

REASON = netns.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

PORT = 1883


def _broker(net: netns.Network, tmp_path: Path) -> None:
    hub = net["hub"]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {PORT} {hub.address}\nallow_anonymous true\nlog_type error\n")
    hub.popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ["mosquitto_pub", "-h", hub.address, "-p", str(PORT), "-t", "probe", "-m", "x"]
    wait_until(lambda: hub.run(probe).returncode == 0, timeout=10, interval=0.05, message="the broker in the hub namespace never answered")


def test_hosts_reach_each_other_over_the_bridge(tmp_path: Path) -> None:
    with netns.Network("emt", ["hub", "node-1"]) as net:
        _broker(net, tmp_path)
        hub, node = net["hub"], net["node-1"]
        sub = hub.popen(
            ["mosquitto_sub", "-h", hub.address, "-p", str(PORT), "-t", "hello", "-C", "1", "-W", "20"],
            stdout=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 20
        while sub.poll() is None:  # the subscriber may not be subscribed yet: publish until it gets one
            node.run(["mosquitto_pub", "-h", hub.address, "-p", str(PORT), "-t", "hello", "-m", "from node-1"], check=True)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert sub.stdout is not None and sub.stdout.read().strip() == "from node-1"

        # The root namespace holds no address of the test network (its traffic never goes there).
        assert hub.address not in subprocess.run(["ip", "-brief", "addr"], capture_output=True, text=True, check=True).stdout


def test_a_link_taken_down_partitions_its_host_and_comes_back(tmp_path: Path) -> None:
    with netns.Network("emt", ["hub", "node-1"]) as net:
        _broker(net, tmp_path)
        hub, node = net["hub"], net["node-1"]
        pub = ["mosquitto_pub", "-h", hub.address, "-p", str(PORT), "-t", "t", "-m", "x"]
        node.link_down()
        assert node.run(["timeout", "3", *pub]).returncode != 0
        node.link_up()
        deadline = time.monotonic() + 10
        while node.run(pub).returncode != 0:
            assert time.monotonic() < deadline, "the healed link never carried a publish again"
            time.sleep(0.1)


def test_a_rate_limit_is_applied_to_the_link(tmp_path: Path) -> None:
    with netns.Network("emt", ["hub", "node-1"]) as net:
        node = net["node-1"]
        node.rate_limit(20)
        shown = node.run(["tc", "qdisc", "show", "dev", "eth0"], check=True).stdout
        assert "tbf" in shown and "20Mbit" in shown
        rx, tx = node.counters()
        assert rx >= 0 and tx >= 0
