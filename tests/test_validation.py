"""Bounds checked once, with the same models at submit, build, placement and run (issue 13, item 9),
and node names refused wherever a node is named."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from ember.errors import InvalidJobSpec
from ember.events import ActorReport, DesiredState, NodeInfo, NodeStatus
from ember.flamelet.settings import FlameletSettings
from ember.jobspec import validate_spec

PROBE = {"name": "p", "probe": {"seconds": 1}}


def spec(**sections: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "p", "probe": {"seconds": 1}}
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (spec(probe={"seconds": float("inf")}), "probe.seconds"),
        (spec(probe={"seconds": float("nan")}), "probe.seconds"),
        (spec(probe={"seconds": 10**9}), "probe.seconds"),
        (spec(probe={"exit_code": 10**30}), "probe.exit_code"),
        (spec(probe={"exit_code": -1}), "probe.exit_code"),
        (spec(probe={"exit_code": 256}), "probe.exit_code"),
        (spec(probe={"aggregator_seconds": float("inf")}), "probe.aggregator_seconds"),
        (spec(training={"round_timeout": 1e300}), "training.round_timeout"),
        (spec(training={"learning_rate": float("inf")}), "training.learning_rate"),
        (spec(training={"seed": -1}), "training.seed"),
        (spec(training={"seed": 2**64}), "training.seed"),
        (spec(training={"local_epochs": 10**12}), "training.local_epochs"),
        (spec(training={"strategy_params": {"proximal_mu": float("inf")}, "strategy": "FedProx"}), "training.strategy_params"),
        (spec(resources={"cpus": float("inf")}), "resources.cpus"),
        (spec(resources={"memory_mb": 10**30}), "resources.memory_mb"),
        (spec(learners={"count": 3, "min": 10**6}), "learners.min"),
        (spec(data={"tags": [f"t{i}" for i in range(101)]}), "data.tags"),
        (spec(data={"tags": ["ok\n"]}), "data.tags"),
        (spec(tracking={"experiment": "bad\x1b[31m"}), "tracking.experiment"),
        (spec(tracking={"model_name": "m" * 201}), "tracking.model_name"),
        (spec(code={"path": "x" * 5000}), "code.path"),
        (spec(code={"requirements": ["numpy\x00"]}), "code.requirements"),
        (spec(name="a" * 64), "name"),
    ],
)
def test_out_of_range_fields_are_refused_at_submit_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        validate_spec(raw)
    fields = [d["field"] for d in caught.value.details]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


def test_the_largest_accepted_values_still_validate() -> None:
    validate_spec(spec(probe={"seconds": 7 * 24 * 3600, "exit_code": 255}, training={"seed": 2**32 - 1, "round_timeout": 3600}))


def test_the_probe_refuses_what_the_manager_refuses_and_runs_what_it_accepts() -> None:
    probe = [sys.executable, "-m", "ember.actors.probe", "--seconds", "0"]
    refused = subprocess.run([*probe, "--exit-code", str(10**30)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "exit_code" in refused.stderr, refused.stderr
    accepted = subprocess.run([*probe, "--exit-code", "255"], capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 255, accepted.stderr


BAD_NODES = ["n" * 300, "n" * 64, "node\x07", "node-1\n", "node/1", "", "-node"]


@pytest.mark.parametrize("node", BAD_NODES)
def test_bad_node_names_are_refused_by_the_flamelet_settings(node: str) -> None:
    if node == "":
        return  # empty means "not set": the flamelet asks for --node
    with pytest.raises(ValidationError):
        FlameletSettings.from_env({}, node_id=node)


@pytest.mark.parametrize("node", BAD_NODES)
def test_bad_node_names_are_refused_in_every_node_payload(node: str) -> None:
    payloads = [
        (NodeInfo, {"node": node, "cpus": 1, "memory_mb": 1024}),
        (NodeStatus, {"node": node, "status": "online"}),
        (DesiredState, {"node": node, "revision": 1}),
        (ActorReport, {"actor": "a", "job": "j", "node": node, "role": "learner", "state": "running"}),
    ]
    for model, data in payloads:
        with pytest.raises(ValidationError):
            model.model_validate(data)


def test_node_info_numbers_are_bounded() -> None:
    for bad in ({"cpus": 10**30}, {"memory_mb": -1}, {"data": {"t": 10**30}}):
        with pytest.raises(ValidationError):
            NodeInfo.model_validate({"node": "node-1", "cpus": 1, "memory_mb": 1, **bad})
    assert NodeInfo.model_validate({"node": "node-1", "cpus": 64, "memory_mb": 1 << 20}).node == "node-1"


@pytest.mark.parametrize("bad", ["a/b", "x" * 129, "job\n", "#", ""])
def test_job_and_actor_ids_in_node_payloads_are_topic_safe(bad: str) -> None:
    report = {"actor": "a", "job": "j", "node": "node-1", "role": "learner", "state": "running"}
    for field in ("actor", "job"):
        with pytest.raises(ValidationError):
            ActorReport.model_validate({**report, field: bad})
    spec = {"actor": bad, "job": "j", "role": "learner", "module": "m", "artifact": {"key": "k"}}
    with pytest.raises(ValidationError):
        DesiredState.model_validate({"node": "node-1", "revision": 1, "actors": [spec]})


def test_the_probe_actor_checks_the_bounds_of_its_spec() -> None:
    from ember.actors import probe
    from ember.jobspec import MAX_SECONDS

    assert probe.MAX_SECONDS == MAX_SECONDS
