"""deploy/ as an operator uses it: the compose files pass Debian's `docker-compose config`, the hub's
Mosquitto config runs a real broker that Ember's bus talks through, and the systemd units verify.

`docker-compose` and `systemd-analyze` come from Debian packages (`make install` as root installs
`docker-compose`); without them those tests skip with the reason (and fail under CI=true).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ember.broker import mosquitto_binary
from ember.bus import Bus, Message
from ember.processes import free_port, wait_for_port
from ember.testing import assert_eventually
from ember import topics

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
HUB_ENV = {"EMBER_HUB_ADDRESS": "10.0.0.1"}
NODE_ENV = {"EMBER_HUB_ADDRESS": "10.0.0.1", "EMBER_NODE_ID": "edge-1", "EMBER_NODE_ADDRESS": "10.0.0.11"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (make install as root installs it)")
        pytest.skip(f"{name} is not installed (make install as root installs it)")
    return found


def compose_config(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | env
    return subprocess.run([tool("docker-compose"), "-f", str(DEPLOY / "compose" / name), "config"],
                          env=clean, capture_output=True, text=True, timeout=30)


def env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_hub_compose_file_is_valid_and_wires_the_hub_together() -> None:
    done = compose_config("hub.yml", env_file(DEPLOY / "compose" / "hub.env.example"))
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == {"mosquitto", "registry", "mlflow", "manager", "builder", "notifier"}
    assert services["mlflow"]["entrypoint"][-1] == "server" and "--workers=1" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for name in ("manager", "builder", "notifier"):
        env = services[name]["environment"]
        assert services[name]["command"] == [name, "run"]
        assert env["EMBER_MQTT_URL"] == "mqtt://mosquitto:1883"
        assert env["EMBER_MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5500"  # actors on other hosts log there
        assert any(v.endswith(":/var/lib/ember:rw") for v in services[name]["volumes"])  # one shared event log
    assert services["notifier"]["environment"]["EMBER_ACTOR_MQTT_URL"] == "mqtt://10.0.0.1:1883"
    published = {name: [str(p) for p in s.get("ports", [])] for name, s in services.items()}
    assert any("1883" in p for p in published["mosquitto"]) and any("5500" in p for p in published["mlflow"])
    assert any("5000" in p for p in published["registry"])


def test_compose_files_name_what_is_missing() -> None:
    hub = compose_config("hub.yml", {})
    assert hub.returncode != 0 and "set EMBER_HUB_ADDRESS" in hub.stderr, hub.stderr
    node = compose_config("node.yml", {"EMBER_HUB_ADDRESS": "10.0.0.1", "EMBER_NODE_ADDRESS": "10.0.0.11"})
    assert node.returncode != 0 and "set EMBER_NODE_ID" in node.stderr, node.stderr


def test_node_compose_file_is_valid_and_announces_the_nodes_own_address() -> None:
    done = compose_config("node.yml", env_file(DEPLOY / "compose" / "node.env.example"))
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"flamelet", "mldata"}
    flamelet, mldata = services["flamelet"]["environment"], services["mldata"]["environment"]
    assert flamelet["EMBER_NODE_ID"] == mldata["EMBER_NODE_ID"] == "edge-1"
    assert flamelet["EMBER_MQTT_URL"] == mldata["EMBER_MQTT_URL"] == "mqtt://10.0.0.1:1883"
    assert flamelet["EMBER_MLDATA_URL"] == "grpc://10.0.0.11:8815"  # not loopback: learners find it by the node's address
    assert services["mldata"]["command"][:2] == ["mldata", "run"] and services["flamelet"]["command"] == ["flamelet", "run"]


@pytest.fixture
def hub_broker(tmp_path: Path) -> Iterator[str]:
    """A Mosquitto running deploy/mosquitto's config as shipped, with only its port, paths and user
    made local (the config is written for a container); yields its URL, checks its output after."""
    conf_d = tmp_path / "conf.d"
    shutil.copytree(DEPLOY / "mosquitto" / "conf.d", conf_d)
    port = free_port()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/data/").replace("/mosquitto/config/conf.d", str(conf_d))
    assert str(port) in text and str(conf_d) in text
    (tmp_path / "data").mkdir()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\n{text}")  # as root, Mosquitto would switch to `mosquitto`
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=20, process=broker)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        broker.terminate()
        output = broker.communicate(timeout=10)[0].decode(errors="replace")
    assert f"Loading config file {conf_d / 'auth.conf'}" in output, output  # conf.d/ is where security plugs in
    assert not re.search(r"error", output, re.IGNORECASE), output


async def test_hub_mosquitto_config_runs_a_broker_ember_talks_through(hub_broker: str) -> None:
    got: list[Message] = []

    async def on_status(message: Message) -> None:
        got.append(message)

    async with Bus(hub_broker, source="test") as sub, Bus(hub_broker, source="test") as pub:
        sub.subscribe(topics.NODE_STATUS, on_status)
        await assert_eventually(lambda: sub.connected, timeout=10)
        topic = topics.NODE_STATUS.format(sub.root, node="edge-1")
        await pub.publish(topic, pub.envelope("NodeStatus", {"node": "edge-1", "status": "online"}), retain=True)
        await assert_eventually(lambda: got, timeout=10, message="no message through the hub's broker")
    assert got[0].params == {"node": "edge-1"}


def test_systemd_units_verify_and_read_the_node_env_file(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    units = [DEPLOY / "systemd" / name for name in ("ember-flamelet.service", "ember-mldata.service")]
    done = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=30)
    # the only complaint allowed here: /opt/ember (the node's install) does not exist on this machine
    problems = [line for line in done.stderr.splitlines() if line.strip() and "/opt/ember/bin/ember is not executable" not in line]
    assert not problems, done.stderr
    example = env_file(DEPLOY / "systemd" / "node.env.example")
    for unit in units:
        text = unit.read_text()
        assert "EnvironmentFile=/etc/ember/node.env" in text and "Restart=on-failure" in text
        for variable in re.findall(r"\$\{(\w+)\}", text):
            assert variable in example, f"{unit.name} uses ${{{variable}}}, which node.env.example does not set"
    assert example["EMBER_MQTT_URL"].startswith("mqtt://") and example["EMBER_NODE_ID"]
