"""A docker job through the whole stack: real Mosquitto, control plane, a private registry,
3 flamelets running their actors as containers on the real engine, each with a real mldata.

The builder builds the digits example into an image and pushes it; each actor's container is
started from that image by digest. Without an engine or registry the module skips with the
reason (fails under CI=true).
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from docker_fixtures import unavailable
from rich.console import Console
from test_e2e_fl import DIGITS, submit

from ember.bus import Bus
from ember.cli.watch import follow_job
from ember.devices.partition import Partition, partition_digits
from ember.devices.publish import put_table
from ember.jobspec import load_spec_file
from ember.registry import Registry, private_registry, registry_binary
from ember.stack import Stack
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(900)
BUILD_TIMEOUT = 600.0
"""A cold run builds the base image too (debootstrap and a wheelhouse): minutes, once per engine."""


@pytest.fixture(scope="module")
def registry(docker_client: Any) -> Iterator[Registry]:
    try:
        registry_binary()
    except RuntimeError as exc:
        unavailable(str(exc))
    with private_registry() as running:
        yield running
    for image in docker_client.images.list():  # the tags naming this registry die with it
        for tag in image.tags:
            if tag.startswith(f"{running.address}/"):
                docker_client.images.remove(tag)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("ember-docker-home")
    env = dict(os.environ, EMBER_HOME=str(home), EMBER_REGISTRY=registry.address)
    env.pop("EMBER_MQTT_URL", None)
    env.pop("EMBER_MLFLOW_TRACKING_URI", None)
    with Stack(home, flamelets=3, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def digits(stack: Stack) -> Partition:
    split = partition_digits(stack.nodes, scheme="dirichlet", alpha=0.5, seed=0)
    for node in stack.nodes:
        info = json.loads(stack.mldata_file(node).read_text())
        assert put_table(split.nodes[node], "digits", info["url"], info["token"]) == split.nodes[node].num_rows
    return split


def docker_spec(**training: Any) -> dict[str, Any]:
    spec = copy.deepcopy(load_spec_file(DIGITS / "job.yaml"))
    spec["training"].update(training)
    spec["runtime"] = "docker"
    return spec


def started_containers(docker_client: Any, job: str, since: float) -> dict[str, str]:
    """actor -> image of every container of `job` the engine started since `since` (its event history)."""
    found = {}
    events = docker_client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "start", "label": f"ember.job={job}"})
    for event in events:
        attributes = event["Actor"]["Attributes"]
        found[attributes["ember.actor"]] = attributes["image"]
    return found


async def test_a_docker_digits_job_runs_in_containers_from_images_pinned_by_digest(stack: Stack, digits: Partition, docker_client: Any):
    began = time.time()
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        job_id = await submit(bus, docker_spec(rounds=3), DIGITS)
        out = io.StringIO()
        job = await follow_job(bus, job_id, Console(file=out, width=200), timeout=BUILD_TIMEOUT)
    if job["state"] != "succeeded":
        print(json.dumps(job["actors"], indent=1))  # shown by pytest on failure: each actor's log tail
    assert job["state"] == "succeeded", job["reason"]
    states = [t["state"] for t in job["transitions"]]
    assert states == ["submitted", "building", "placing", "deploying", "running", "succeeded"], states
    artifact = job["artifact"]
    assert artifact["kind"] == "image" and "@sha256:" in artifact["image"], artifact
    assert artifact["image"].startswith(stack.env["EMBER_REGISTRY"] + "/")
    actors = {a["actor"] for a in job["actors"]}
    assert len(actors) == 4 and {a["node"] for a in job["actors"]} == set(stack.nodes)
    assert started_containers(docker_client, job_id, began) == dict.fromkeys(actors, artifact["image"])
    assert job["result"]["metrics"]["eval_accuracy"] >= 0.8, job["result"]
    # the job ended: its containers are removed
    await assert_eventually(lambda: docker_client.containers.list(all=True, filters={"label": f"ember.job={job_id}"}) == [],
                            timeout=30, interval=0.2, message="containers of the ended job are still there")
