"""Node labels and serving in the control plane, as pure functions: label-constrained placement,
the serving fold (`ember.serving`), the notifier's serving actors and the flamelet's label setting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ember.events import ModelServeRequested, ModelServeStopped, NodeInfo, NodeStatus, Role
from ember.flamelet.settings import FlameletSettings
from ember.jobspec import JobSpec
from ember.nodes import NodeTable
from ember.notifier.desired import ActorEnv, desired_actors
from ember.notifier.placement import NoCapacity, place_job
from ember.projection import JobState, JobView, Projection
from ember.serving import apply, serving_nodes

pytestmark = pytest.mark.timeout(60)
ENV = ActorEnv(mqtt_url="mqtt://127.0.0.1:1883", topic_root="ember/v1", mlflow_tracking_uri="sqlite:///m.db", home="/tmp/h")


def info(name: str, **labels: str) -> NodeInfo:
    return NodeInfo(node=name, cpus=4, memory_mb=8192, labels=labels)


def table(*infos: NodeInfo) -> NodeTable:
    nodes = NodeTable()
    for one in infos:
        nodes.update_info(one)
        nodes.update_status(NodeStatus(node=one.node, status="online"))
    return nodes


def placing(labels: dict[str, str], learners: int = 2) -> JobView:
    spec = {"name": "job", "learners": {"count": learners}, "placement": {"labels": labels}, "probe": {}}
    return JobView("job1", "job", spec, "", datetime.now(UTC), state=JobState.PLACING)


def test_placement_uses_only_nodes_carrying_every_required_label() -> None:
    online = [info("a1", site="plant-a"), info("a2", site="plant-a", line="2"), info("b1", site="plant-b"), info("n0")]
    placed = place_job(placing({"site": "plant-a"}), Projection(), online)
    assert {p.node for p in placed} == {"a1", "a2"}
    placed = place_job(placing({"site": "plant-a", "line": "2"}, learners=1), Projection(), online)
    assert {p.node for p in placed} == {"a2"}
    with pytest.raises(NoCapacity, match="label site=plant-c"):
        place_job(placing({"site": "plant-c"}), Projection(), online)


def test_job_spec_accepts_placement_labels_and_rejects_unknown_fields() -> None:
    assert JobSpec.model_validate({"name": "j", "probe": {}, "placement": {"labels": {"site": "a"}}}).placement.labels == {"site": "a"}
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"name": "j", "probe": {}, "placement": {"sites": ["a"]}})


def test_serving_fold_adds_nodes_matches_labels_and_stops_per_node() -> None:
    servings: dict = {}
    online = [info("a1", site="plant-a"), info("a2", site="plant-a"), info("b1", site="plant-b")]
    apply(servings, ModelServeRequested(model="m", version="3", nodes=["b1"]))
    assert serving_nodes(servings["m"], online) == ["b1"]
    apply(servings, ModelServeRequested(model="m", version="4", labels={"site": "plant-a"}))
    assert servings["m"].version == "4"
    assert serving_nodes(servings["m"], online) == ["a1", "a2", "b1"]
    apply(servings, ModelServeStopped(model="m", nodes=["a2"]))
    assert serving_nodes(servings["m"], online) == ["a1", "b1"]
    apply(servings, ModelServeStopped(model="m"))
    assert servings == {}


def test_desired_state_runs_a_server_actor_on_each_serving_node() -> None:
    nodes = table(info("a1", site="plant-a"), info("b1", site="plant-b"))
    projection = Projection()
    apply(projection.servings, ModelServeRequested(model="m", version="2", labels={"site": "plant-a"}, tag="line-1"))
    desired = desired_actors(projection, nodes, ENV)
    assert desired["b1"] == []
    [spec] = desired["a1"]
    assert (spec.role, spec.module, spec.actor) == (Role.SERVER, "ember.actors.server", "serve-m-v2-a1")
    assert spec.env["EMBER_SERVE_MODEL"] == "m" and spec.env["EMBER_SERVE_VERSION"] == "2" and spec.env["EMBER_SERVE_TAG"] == "line-1"
    assert spec.env["EMBER_MLFLOW_TRACKING_URI"] == "sqlite:///m.db" and spec.artifact.python == ""


def test_flamelet_labels_from_the_environment_or_repeated_flags() -> None:
    env = {"EMBER_NODE_ID": "n1", "EMBER_FLAMELET_LABELS": "site=plant-a, line=2"}
    assert FlameletSettings.from_env(env).flamelet_labels == {"site": "plant-a", "line": "2"}
    assert FlameletSettings.from_env({"EMBER_NODE_ID": "n1"}, flamelet_labels=["site=b"]).flamelet_labels == {"site": "b"}
    with pytest.raises(ValidationError):
        FlameletSettings.from_env({"EMBER_NODE_ID": "n1", "EMBER_FLAMELET_LABELS": "plant-a"})


def test_flamelet_labels_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_NODE_ID", "n1")
    monkeypatch.setenv("EMBER_FLAMELET_LABELS", "site=plant-a,line=2")
    assert FlameletSettings().flamelet_labels == {"site": "plant-a", "line": "2"}
