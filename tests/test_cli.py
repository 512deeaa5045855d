"""The ember CLI without the control plane: AsyncAPI, broker discovery, and clear errors + exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ember import actions, events, topics
from ember.bus import Bus
from ember.cli.main import app
from ember.testing import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cli(ember_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EMBER_MQTT_URL", raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args), catch_exceptions=False)


def test_asyncapi_lists_every_topic_and_payload(cli, tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    result = cli("asyncapi", "-o", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {"asyncapi", "info", "channels", "operations", "components"} <= set(doc)
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {f"ember/v1/{t.pattern}" for t in topics.ALL}
    for channel in doc["channels"].values():
        assert set(channel["parameters"]) == set(re.findall(r"{(\w+)}", channel["address"]))
    schemas = doc["components"]["schemas"]
    assert {"Envelope", "NodeInfo", "NodeStatus", "DesiredState", "ActorReport", "ActorLogLines"} <= set(schemas)
    assert set(events.Event.registry) <= set(schemas)
    for op in doc["operations"].values():  # every reference resolves
        channel = doc["channels"][op["channel"]["$ref"].split("/")[-1]]
        for ref in op["messages"]:
            assert ref["$ref"].split("/")[-1] in channel["messages"]
    text = json.dumps(doc)
    for ref in set(re.findall(r'"#/components/schemas/(\w+)"', text)):
        assert ref in schemas, ref
    # the default output is YAML with the same content
    assert yaml.safe_load(cli("asyncapi").stdout) == doc


def test_no_broker_is_a_clear_error_with_exit_code_6(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    result = cli("job", "list")
    assert result.exit_code == 6
    assert "cannot reach the MQTT broker" in result.stderr and "ember up" in result.stderr


def test_no_manager_is_a_clear_error_with_exit_code_5(cli, mqtt_broker, ember_home: Path) -> None:
    (ember_home / "broker.json").write_text(json.dumps({"url": mqtt_broker.url}))  # as `ember up` records it
    result = cli("node", "list", "--timeout", "0.5")
    assert result.exit_code == 5
    assert "no manager answered" in result.stderr


def test_job_file_errors_exit_before_any_request(cli, tmp_path: Path) -> None:
    assert cli("job", "submit", str(tmp_path / "missing.yaml")).exit_code == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = cli("job", "submit", str(bad))
    assert result.exit_code == 2 and "(file)" in result.stderr


def test_a_code_folder_past_the_bundle_limit_names_its_biggest_files(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.py").write_text("class M: ...\n")
    (tmp_path / "readings.parquet").write_bytes(os.urandom(10_000))
    (tmp_path / "job.yaml").write_text("name: big\ncode: {path: ., entrypoint: 'model:M'}\n")
    monkeypatch.setenv("EMBER_BUNDLE_MAX_BYTES", "4096")
    result = cli("job", "submit", str(tmp_path / "job.yaml"))  # refused before any broker is needed
    assert result.exit_code == 2, result.output
    assert "readings.parquet" in result.stderr and ".emberignore" in result.stderr


def test_commands_find_the_broker_recorded_by_ember_up(cli, mqtt_broker, ember_home: Path) -> None:
    """`ember node list` with no flags talks to the broker in `$EMBER_HOME/broker.json`."""
    nodes = [{"node": "node-1", "status": "online", "info": {"capabilities": ["learner"], "data": {"s": 5}}, "actors": []}]
    ready, stop = threading.Event(), threading.Event()

    async def fake_manager() -> None:
        bus = Bus(mqtt_broker.url, client_id="fake-manager")

        async def list_nodes(_request, _envelope):
            return nodes

        bus.serve(actions.NODES_LIST, list_nodes)
        async with bus:
            ready.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(fake_manager()), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        (ember_home / "broker.json").write_text(json.dumps({"url": mqtt_broker.url}))
        result = cli("node", "list", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == nodes
        table = cli("node", "list").stdout
        assert "node-1" in table and "online" in table and "s (5 rows)" in table
    finally:
        stop.set()
        thread.join(10)


def test_every_command_has_help(cli) -> None:
    for args in (["--help"], ["job", "--help"], ["job", "submit", "--help"], ["node", "list", "--help"], ["data", "push", "--help"],
                 ["devices", "mock", "--help"], ["up", "--help"], ["asyncapi", "--help"]):
        result = cli(*args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args
    assert "Exit codes" in cli("--help").stdout
    for service, option in (("manager", "--eventlog-url"), ("flamelet", "--node"), ("mldata", "--data-dir")):
        result = cli(service, "run", "--help")  # passed through to the service's own parser
        assert result.exit_code == 0 and option in result.stdout, (service, result.output)
