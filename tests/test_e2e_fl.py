"""Federated training through the whole stack: real Mosquitto, control plane, 3 flamelets each
with a real mldata (Arrow Flight), learner and aggregator processes running Flower, real MLflow.

One stack is shared by the module; the digits data is pushed once to each node with Flight
(`partition_digits`, Dirichlet(0.5), seed 0: each node holds only its own label-skewed part).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from ember import topics
from ember.bundle_bus import submit_job
from ember.bus import Bus, Message
from ember.cli.watch import follow_job
from ember.demo import find_mlflow_run
from ember.devices.partition import Partition, partition_digits
from ember.devices.publish import put_table
from ember.errors import InvalidJobSpec
from ember.events import ActorReport, Role
from ember.jobspec import load_spec_file
from ember.settings import Settings
from ember.stack import Stack
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(240)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIGITS = EXAMPLES / "digits"
FLOWER_APP = EXAMPLES / "flower-app"
ACCURACY_THRESHOLD = 0.85
"""Final federated accuracy the digits example must clear (chance: 0.10; it reaches ~0.94)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("ember-fl-home")
    env = dict(os.environ, EMBER_HOME=str(home), FLOWERDIGITS_RESULT_FILE=str(home / "flower-app-result.json"))
    env.pop("EMBER_MQTT_URL", None)
    env.pop("EMBER_MLFLOW_TRACKING_URI", None)
    with Stack(home, flamelets=3, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def digits(stack: Stack) -> Partition:
    """Each node's Dirichlet part of the digits, pushed to that node's mldata with Flight."""
    split = partition_digits(stack.nodes, scheme="dirichlet", alpha=0.5, seed=0)
    for node in stack.nodes:
        info = json.loads(stack.mldata_file(node).read_text())
        assert put_table(split.nodes[node], "digits", info["url"], info["token"]) == split.nodes[node].num_rows
    return split


def digits_spec(**training: Any) -> dict[str, Any]:
    spec = copy.deepcopy(load_spec_file(DIGITS / "job.yaml"))
    spec["training"].update(training)
    return spec


async def submit(bus: Bus, spec: dict[str, Any], spec_dir: Path) -> str:
    """Submit as `ember job submit` does: the code folder packed and published as a bundle first."""
    reply = await submit_job(bus, spec, spec_dir)
    return reply["job"]


async def wait_job(bus: Bus, job: str, timeout: float = 150.0) -> dict[str, Any]:
    """The job's summary once terminal (the CLI's own follower, rendering into a buffer)."""
    summary = await follow_job(bus, job, Console(file=io.StringIO()), timeout=timeout)
    assert summary["state"] in ("succeeded", "failed", "cancelled"), summary
    return summary


async def ember_cli(stack: Stack, *args: str) -> Any:
    """Run the `ember` command against the stack; its JSON (with --json) or its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {"EMBER_HOME": str(stack.home)}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ember"), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, errors = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (args, errors.decode()[-2000:])
    return json.loads(out) if "--json" in args else out.decode()


def tracking_uri(stack: Stack) -> str:
    return Settings.from_env({"EMBER_HOME": str(stack.home)}).resolved_mlflow_uri()


async def test_digits_succeeds_and_is_tracked_in_mlflow(stack: Stack, digits: Partition) -> None:
    spec = load_spec_file(DIGITS / "job.yaml")
    rounds = spec["training"]["rounds"]
    async with Bus(stack.url, source="test") as bus:
        job = await wait_job(bus, await submit(bus, spec, DIGITS))
    assert job["state"] == "succeeded", job["reason"]
    assert [r["round"] for r in job["rounds"]] == list(range(1, rounds + 1))
    assert all(len(r["learners"]) == 3 for r in job["rounds"])
    result = job["result"]
    assert result["metrics"]["eval_accuracy"] >= ACCURACY_THRESHOLD, result["metrics"]

    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(stack)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    # the job's run is named after the job id, and the job's result names it and the model version
    run_id, version = find_mlflow_run(uri, spec["tracking"]["experiment"], job["job"])
    assert run_id and version, "no MLflow run / registered model version for the job"
    assert (result["mlflow_run_id"], result["model_version"]) == (run_id, version)
    report = await ember_cli(stack, "job", "report", job["job"], "--out", str(stack.home / "report.png"), "--json")
    assert report["rounds"] == rounds and (report["mlflow_run_id"], report["model_version"]) == (run_id, version), report
    assert Path(report["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # noqa: ASYNC240 (a few bytes, in a test)
    printed = await ember_cli(stack, "job", "report", job["job"], "--out", str(stack.home / "report2.png"))
    assert f"MLflow run: {run_id}" in printed and f"model version: {version}" in printed, printed
    history = client.get_metric_history(run_id, "eval_accuracy")
    assert sorted(m.step for m in history) == list(range(1, rounds + 1))  # one point per round
    assert client.get_run(run_id).info.status == "FINISHED"

    model = mlflow.pyfunc.load_model(f"models:/{spec['tracking']['model_name']}/{version}")
    held_out = digits.test.to_pandas()
    predicted = np.asarray(model.predict(held_out[[f"pixel_{i}" for i in range(64)]].to_numpy()))
    accuracy = float(np.mean(predicted == held_out["label"].to_numpy()))
    assert accuracy >= ACCURACY_THRESHOLD, accuracy  # rows no learner ever saw


async def test_code_travels_as_a_bundle_the_submitters_folder_can_go(stack: Stack, digits: Partition, tmp_path: Path) -> None:
    """`ember job submit` from a folder that is deleted right after: the builder and the nodes
    never read it, the job still builds and trains from the bundle they fetched."""
    code = tmp_path / "my-digits"
    shutil.copytree(DIGITS, code)
    (code / "job.yaml").write_text((code / "job.yaml").read_text().replace("rounds: 10", "rounds: 2"))
    (code / "scratch.npy").write_bytes(b"\0" * 1000)
    (code / ".emberignore").write_text("*.npy\n")
    submitted = await ember_cli(stack, "job", "submit", str(code / "job.yaml"), "--json")
    shutil.rmtree(code)
    async with Bus(stack.url, source="test") as bus:
        job = await wait_job(bus, submitted["job"])
    assert job["state"] == "succeeded", job["reason"]
    assert len(job["rounds"]) == 2 and all(len(r["learners"]) == 3 for r in job["rounds"])
    assert job["artifact"]["kind"] == "bundle" and job["artifact"]["bundle"].startswith("sha256:")


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"strategy": "FedNope"}, "training.strategy"),
        ({"strategy": "FedProx", "strategy_params": {"proximal_mu": 0.1, "momentum": 0.9}}, "training.strategy_params"),
    ],
)
async def test_invalid_strategy_is_refused_at_submit_naming_the_field(stack: Stack, training: dict[str, Any], field: str) -> None:
    async with Bus(stack.url, source="test") as bus:
        with pytest.raises(InvalidJobSpec) as refused:
            await submit(bus, digits_spec(**training), DIGITS)
        jobs = await bus.request("jobs.list", {}, timeout=10)
    assert field in [d["field"] for d in refused.value.details], refused.value.details
    assert all(j["name"] != "digits" or j["state"] != "submitted" for j in jobs)


async def test_flower_app_runs_on_ember_unchanged(stack: Stack) -> None:
    result_file = stack.home / "flower-app-result.json"
    async with Bus(stack.url, source="test") as bus:
        job = await wait_job(bus, await submit(bus, load_spec_file(FLOWER_APP / "job.yaml"), FLOWER_APP))
    assert job["state"] == "succeeded", job["reason"]
    # what the user's own ServerApp computed and wrote: FedAvg over 3 partitions, 10 rounds
    summary = json.loads(result_file.read_text())
    assert summary["rounds"] == 10 and len(job["rounds"]) == 10
    assert summary["holdout_accuracy"] >= ACCURACY_THRESHOLD
    assert all(len(r["learners"]) == 3 for r in job["rounds"])


async def learner_pids(bus: Bus, job: str) -> dict[str, int]:
    """Running learners of `job` -> pid, from the flamelets' retained actor reports."""
    pids: dict[str, int] = {}

    async def on_state(message: Message) -> None:
        report = ActorReport.model_validate(message.envelope.data)
        if report.job == job and report.role == Role.LEARNER and report.pid and report.state == "running":
            pids[report.actor] = report.pid

    bus.subscribe(topics.ACTOR_STATE, on_state)
    await assert_eventually(lambda: len(pids) == 3, timeout=60, message=f"learners of {job} not all running")
    return pids


def actor_process(shim_pid: int) -> int:
    """The learner's own process: the one child of the flamelet's shim (the reported pid)."""
    children = Path(f"/proc/{shim_pid}/task/{shim_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


async def rounds_done(bus: Bus, job: str) -> int:
    """Rounds completed while the job runs; -1 once it is no longer running (0: none yet)."""
    summary = await bus.request("jobs.get", {"job": job}, timeout=10)
    return len(summary["rounds"]) if summary["state"] in ("running", "deploying") else -1


@pytest.mark.parametrize(("minimum", "outcome"), [(2, "succeeded"), (3, "failed")])
async def test_learner_killed_mid_job(stack: Stack, digits: Partition, minimum: int, outcome: str) -> None:
    """SIGKILL one learner after round 2: 2 learners left is enough for min 2, not for min 3."""
    rounds = 100  # ~30 ms each here: seconds of running job to kill a learner in, even on a fast machine
    spec = digits_spec(rounds=rounds, round_timeout=30)
    spec["learners"] = {"count": 3, "min": minimum}
    async with Bus(stack.url, source="test") as bus:
        job_id = await submit(bus, spec, DIGITS)
        pids = await learner_pids(bus, job_id)
        progressed = await assert_eventually(lambda: rounds_done(bus, job_id), timeout=90, interval=0.01)
        assert 0 < progressed < rounds, "the job must still be running when the learner is killed"
        victim = sorted(pids)[0]
        os.kill(actor_process(pids[victim]), signal.SIGKILL)
        job = await wait_job(bus, job_id)
    assert job["state"] == outcome, job["reason"]
    if outcome == "succeeded":
        assert len(job["rounds"]) == rounds
        assert len(job["rounds"][-1]["learners"]) == 2 and victim not in job["rounds"][-1]["learners"]
        assert job["result"]["metrics"]["eval_accuracy"] >= ACCURACY_THRESHOLD
    else:
        assert "minimum" in job["reason"] and str(minimum) in job["reason"], job["reason"]
        assert len(job["rounds"]) < rounds
