"""Model serving end to end: a real stack (ember.stack.Stack) and a real MLflow store.

A tiny scikit-learn model is registered straight into the stack's tracking store; `ember model
serve` runs it as a serving actor on a node, which answers MLflow's `POST /invocations` and scores
the node's sensor readings onto MQTT; `ember model stop` removes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ember import topics
from ember.bus import Bus, Message
from ember.cli.main import app
from ember.devices.publish import readings_envelope
from ember.envelope import decode
from ember.fl.tracking import artifact_root
from ember.stack import Stack
from ember.testing import wait_until

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny-anomaly"
TAG = "line-1"
FEATURES = ["temperature", "vibration", "pressure"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("ember-serving")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE="2", EMBER_LOG_LEVEL="info", EMBER_FLAMELET_LABELS="site=plant-a,line=1")
    with Stack(home, flamelets=2, env=env, grace=10) as s:
        yield s


@pytest.fixture
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    for key in [k for k in os.environ if k.startswith("EMBER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("EMBER_HOME", str(stack.home))
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else result.stdout

    return invoke


@pytest.fixture(scope="module")
def registered(stack: Stack) -> tuple[str, Any]:
    """Train and register `MODEL` version 1 in the stack's store; (tracking uri, held-out rows)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    # Through the stack's own tracking server, once it answers: it creates its store when it starts,
    # so writing the SQLite file beside it could race with that.
    stack.wait_tracking()
    uri = stack.tracking_uri
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(200, len(FEATURES))), columns=FEATURES)
    labels = (frame["temperature"] + 0.5 * frame["vibration"] > 0).astype(int)
    train, held_out = frame.iloc[:150], frame.iloc[150:]
    model = LogisticRegression().fit(train, labels.iloc[:150])
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # an earlier in-process test may have pointed the registry elsewhere
    experiment = mlflow.create_experiment("serving-test", artifact_location=artifact_root(uri))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(train, model.predict(train)),
                                 registered_model_name=MODEL)
    return uri, held_out


def serving_actor(cli, node: str) -> dict[str, Any] | None:
    listed = {n["node"]: n for n in cli("node", "list", "--json")}
    return next((a for a in listed[node]["actors"] if a["role"] == "server"), None)


def running_url(cli, node: str) -> str:
    def ready() -> str:
        actor = serving_actor(cli, node)
        return actor["url"] if actor and actor["state"] == "running" and actor.get("url") else ""

    return wait_until(ready, timeout=90, interval=0.3, message=f"no serving actor running with a URL on {node}")


def invocations(url: str, body: dict[str, Any]) -> list[Any]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]


def score_over_mqtt(stack: Stack, node: str, readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish `readings` on `data/{TAG}` as one device batch; the predictions the node publishes."""

    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        enough = asyncio.Event()

        async def on_prediction(message: Message) -> None:
            got.append(decode(message.payload).data)
            if len(got) >= len(readings):
                enough.set()

        bus = Bus(stack.url, security=stack.security())  # the operator reads predictions ...
        bus.subscribe(topics.PREDICTIONS, on_prediction, raw=True, node=node, model=MODEL)
        async with bus, Bus(stack.url, security=stack.security(f"devices-{node}")) as devices:  # ... the node's devices send readings
            await devices.publish(topics.DATA.format(bus.root, tag=TAG), readings_envelope("dev-1", TAG, readings))
            await asyncio.wait_for(enough.wait(), 30)
        return got

    return asyncio.run(run())


def test_node_list_shows_the_labels_each_flamelet_announces(stack: Stack, cli) -> None:
    nodes = cli("node", "list", "--json")
    assert {n["node"]: n["info"]["labels"] for n in nodes} == {node: {"site": "plant-a", "line": "1"} for node in stack.nodes}
    assert "site=plant-a" in cli("node", "list")


def test_serve_answers_invocations_and_scores_readings_then_stop_removes_it(stack: Stack, cli, registered) -> None:
    import mlflow

    uri, held_out = registered
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(held_out).tolist()

    served = cli("model", "serve", MODEL, "--version", "1", "--node", "node-1", "--tag", TAG, "--json")
    assert served["nodes"] == ["node-1"]
    url = running_url(cli, "node-1")
    assert serving_actor(cli, "node-2") is None

    split = json.loads(held_out.to_json(orient="split", index=False))
    assert invocations(url, {"dataframe_split": split}) == expected
    assert invocations(url, {"instances": held_out.to_dict(orient="records")}) == expected

    readings = [dict(row, device="dev-1", seq=i) for i, row in enumerate(held_out.iloc[:10].to_dict(orient="records"))]
    predictions = score_over_mqtt(stack, "node-1", readings)
    assert len(predictions) == len(readings)
    assert sorted((p["reading"]["seq"], p["prediction"]) for p in predictions) == list(enumerate(expected[:10]))
    assert {(p["model"], p["version"], p["node"]) for p in predictions} == {(MODEL, "1", "node-1")}

    models = {m["model"]: m for m in cli("model", "list", "--json")}
    assert models[MODEL]["versions"] == ["1"]
    assert models[MODEL]["serving"]["nodes"] == ["node-1"]

    stopped = cli("model", "stop", MODEL, "--node", "node-1", "--json")
    assert stopped["nodes"] == []
    wait_until(lambda: serving_actor(cli, "node-1") is None, timeout=30, interval=0.3, message="the serving actor is still listed")

    def refused() -> bool:
        try:
            invocations(url, {"dataframe_split": split})
        except (urllib.error.URLError, ConnectionError):
            return True
        return False

    wait_until(refused, timeout=30, interval=0.3, message="the serving actor still answers after stop")
    assert MODEL not in {m["model"]: m for m in cli("model", "list", "--json") if m["serving"]}


def test_serve_by_label_runs_on_every_node_carrying_it(stack: Stack, cli, registered) -> None:
    served = cli("model", "serve", MODEL, "--label", "site=plant-a", "--json")
    assert served["nodes"] == stack.nodes
    for node in stack.nodes:
        running_url(cli, node)
    cli("model", "stop", MODEL)
    for node in stack.nodes:
        wait_until(lambda node=node: serving_actor(cli, node) is None, timeout=30, interval=0.3)


def test_serve_needs_nodes_or_labels_and_stop_needs_a_served_model(cli, stack: Stack, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["model", "serve", MODEL], catch_exceptions=False)
    assert result.exit_code != 0 and "--node" in result.output
    result = runner.invoke(app, ["model", "stop", "never-served"], catch_exceptions=False)
    assert result.exit_code != 0 and "not served" in result.output


@pytest.fixture
def plant_b(stack: Stack):
    """A third flamelet, `node-b`, started with `--label site=plant-b` (stopped by its pid at the end)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(stack.home), EMBER_KEEPALIVE="2", EMBER_LOG_LEVEL="info")
    # a node joining a secured stack: provision its identity, let the broker re-read its files
    from ember.security.provision import Pki, provision, reload_broker

    provision(stack.home, nodes=["node-b"])
    reload_broker(stack.pid("mosquitto"))
    env["EMBER_IDENTITY"] = str(Pki(stack.home).bundle("node-b"))
    log = open(stack.home / "logs" / "node-b.log", "ab")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen([sys.executable, "-m", "ember.flamelet", "--node", "node-b", "--label", "site=plant-b", "--cpus", "4"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield "node-b"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_labels_choose_the_nodes_of_serving_and_of_a_job(stack: Stack, cli, registered, plant_b: str, tmp_path: Path) -> None:
    def online() -> dict[str, Any]:
        nodes = {n["node"]: n for n in cli("node", "list", "--json")}
        return nodes if nodes.get(plant_b, {}).get("status") == "online" else {}

    nodes = wait_until(online, timeout=60, interval=0.3, message="node-b never came online")
    assert nodes[plant_b]["info"]["labels"] == {"site": "plant-b"}

    assert cli("model", "serve", MODEL, "--label", "site=plant-b", "--json")["nodes"] == [plant_b]
    running_url(cli, plant_b)
    assert all(serving_actor(cli, node) is None for node in stack.nodes)
    cli("model", "stop", MODEL)
    wait_until(lambda: serving_actor(cli, plant_b) is None, timeout=30, interval=0.3)

    path = tmp_path / "placed.yaml"
    path.write_text("name: placed\nlearners: {count: 1}\nprobe: {seconds: 0.5}\nruntime: process\n"
                    "placement: {labels: {site: plant-b}}\n")
    job = cli("job", "submit", str(path), "--json")["job"]
    shown = wait_until(lambda: (j := cli("job", "show", job, "--json"))["state"] in ("succeeded", "failed") and j,
                       timeout=90, interval=0.3, message=f"{job} never ended")
    assert shown["state"] == "succeeded", shown["reason"]
    assert {a["node"] for a in shown["actors"]} == {plant_b}
