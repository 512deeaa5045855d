"""A node joins over the network: in its own network namespace, `ember mldata run` binds the node's
address and `ember flamelet run` reaches the hub's broker by URL and announces where the node's
learners find its mldata (the URL mldata recorded), which another host can then reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ember.broker import mosquitto_binary
from tests import netns

REASON = netns.available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.timeout(120)]

PORT, FLIGHT_PORT = 1883, 8815
EMBER = str(Path(sys.executable).parent / "ember")
TOKEN = "join-test-token"


def wait_for(check, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll `check()` (a command run in a namespace) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


def test_a_node_joins_over_the_network_and_announces_its_mldata(tmp_path: Path) -> None:
    with netns.Network("emj", ["hub", "node"]) as net:
        hub, node = net["hub"], net["node"]
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {PORT} {hub.address}\nallow_anonymous true\nlog_type error\n")
        hub.popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"mqtt://{hub.address}:{PORT}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {
            "EMBER_HOME": str(tmp_path / "node-home"), "EMBER_LOG_FORMAT": "json", "EMBER_MLDATA_TOKEN": TOKEN}
        data_dir = tmp_path / "node-data"
        logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("mldata", "flamelet")}
        node.popen([EMBER, "mldata", "run", "--mqtt-url", url, "--node", "node", "--host", node.address,
                    "--port", str(FLIGHT_PORT), "--data-dir", str(data_dir)], env=env, stdout=logs["mldata"], stderr=subprocess.STDOUT)
        wait_for(lambda: (data_dir / "_url").exists(), "mldata never recorded its URL")
        node.popen([EMBER, "flamelet", "run", "--mqtt-url", url, "--node", "node", "--data-dir", str(data_dir)],
                   env=env, stdout=logs["flamelet"], stderr=subprocess.STDOUT)

        def announced() -> dict | None:  # type: ignore[type-arg]
            got = hub.run(["mosquitto_sub", "-h", hub.address, "-p", str(PORT), "-t", "ember/v1/nodes/node/info", "-C", "1", "-W", "2"])
            return json.loads(got.stdout)["data"] if got.returncode == 0 and got.stdout.strip() else None

        info = wait_for(announced, f"the node never announced itself:\n{(tmp_path / 'flamelet.log').read_text()[-2000:]}")
        assert info["mldata_url"] == f"grpc://{node.address}:{FLIGHT_PORT}", info

        # another host reaches the node's mldata at the announced URL (it is bound to the node's address)
        listing = hub.run([sys.executable, "-c", (
            "import sys; from ember.data.client import MldataClient\n"
            "with MldataClient(sys.argv[1], sys.argv[2]) as c: print(c.tags())"), info["mldata_url"], TOKEN])
        assert listing.returncode == 0, listing.stderr[-2000:]
