"""Recovery in a real local stack (Mosquitto, manager, builder, notifier, 3 flamelets with real
mldata, aggregator and learner processes running Flower): the aggregator process is killed with
SIGKILL while its node stays up.

- the job goes running -> recovering -> running and succeeds with every round once, the new
  aggregator having resumed from a checkpoint (not round 1) and the learners not restarted;
- with `training.max_recoveries` 1, a second kill fails the job naming both attempts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.bundle_bus import submit_job
from ember.bus import Bus
from ember.devices.publish import put_table
from ember.stack import Stack
from ember.testing import assert_eventually
from test_fencing import Reports, child_of, job_view

pytestmark = pytest.mark.timeout(300)

APP_DIR = Path(__file__).parent / "fl_app"
sys.path.insert(0, str(APP_DIR))
from tiny_model import make_table  # noqa: E402

ROUNDS = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("ember-recovery")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE="2", EMBER_MLFLOW_TRACKING_URI="none", EMBER_LOG_FORMAT="json", TINY_FIT_SECONDS="0.2")
    with Stack(home, flamelets=3, env=env, grace=10) as running:
        for index, node in enumerate(running.nodes):
            info = json.loads(running.mldata_file(node).read_text())
            assert put_table(make_table(200, seed=index), "tiny", info["url"], info["token"]) == 200
        yield running


def spec(max_recoveries: int) -> dict[str, Any]:
    return {
        "name": "recover",
        "code": {"path": ".", "entrypoint": "tiny_model:TinyModel"},
        "data": {"tags": ["tiny"]},
        "learners": {"count": 2, "min": 2},
        "training": {"rounds": ROUNDS, "learning_rate": 0.1, "round_timeout": 60, "max_recoveries": max_recoveries, "checkpoint_interval": 0},
        "resources": {"cpus": 0.25, "memory_mb": 64},
        "runtime": "process",
    }


async def kill_aggregator_after(bus: Bus, reports: Reports, job_id: str, generation: int, checkpoints: int) -> dict[str, Any]:
    """Once the aggregator of `generation` runs and the job holds a checkpoint of round >=
    `checkpoints`: SIGKILL the aggregator's own process; returns its actor view."""

    async def ready() -> dict[str, Any] | None:
        view = await job_view(bus, job_id)
        agg = next((a for a in view["actors"] if a["role"] == "aggregator" and a["generation"] == generation), None)
        saved = (view.get("checkpoint") or {}).get("round", 0)
        ok = agg is not None and agg["state"] == "running" and saved >= checkpoints and reports.actors.get(agg["actor"])
        return agg if ok else None

    agg = await assert_eventually(ready, timeout=120, interval=0.2, message=f"no running aggregator of generation {generation} with a checkpoint")
    pid = await child_of(reports.actors[agg["actor"]].pid or 0)
    os.kill(pid, signal.SIGKILL)
    return agg


async def ended(bus: Bus, job_id: str) -> dict[str, Any]:
    async def terminal() -> dict[str, Any] | None:
        view = await job_view(bus, job_id)
        return view if view["state"] in ("succeeded", "failed", "cancelled") else None

    return await assert_eventually(terminal, timeout=240, interval=0.5, message=f"{job_id} did not end")


async def test_a_killed_aggregator_process_is_recovered_and_the_job_succeeds(stack: Stack) -> None:
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        reports = Reports(bus)
        job_id = (await submit_job(bus, spec(max_recoveries=3), APP_DIR))["job"]
        old = await kill_aggregator_after(bus, reports, job_id, 1, checkpoints=3)
        learner_pids = {a: reports.actors[a].pid for a in reports.actors if "-learner-" in a and a.startswith(job_id)}
        final = await ended(bus, job_id)
    assert final["state"] == "succeeded", final["reason"]
    states = [t["state"] for t in final["transitions"]]
    assert states[-3:] == ["recovering", "running", "succeeded"], states
    [recovery] = final["recoveries"]
    assert recovery["attempt"] == 1 and "failed with exit code -9" in recovery["reason"], recovery
    assert [r["round"] for r in final["rounds"]] == list(range(1, ROUNDS + 1))
    new = next(a for a in final["actors"] if a["role"] == "aggregator" and a["generation"] == 2)
    assert new["state"] == "exited" and new["actor"] != old["actor"]
    log = (stack.home / "nodes" / new["node"] / "actors" / f"{new['actor']}.log").read_text()
    resumed = [json.loads(line) for line in log.splitlines() if '"aggregator.resume"' in line]
    assert resumed and resumed[0]["round"] >= 3, log[-2000:]
    learners = [a for a in final["actors"] if a["role"] == "learner"]
    assert {a["generation"] for a in learners} == {2} and {a["actor"] for a in learners} == set(learner_pids)
    # the learners were not restarted: the processes that ran at the kill are the ones that finished
    assert all(reports.actors[a].pid == pid for a, pid in learner_pids.items())


async def test_past_max_recoveries_the_job_fails_naming_each_attempt(stack: Stack) -> None:
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        reports = Reports(bus)
        job_id = (await submit_job(bus, spec(max_recoveries=1), APP_DIR))["job"]
        await kill_aggregator_after(bus, reports, job_id, 1, checkpoints=1)
        await kill_aggregator_after(bus, reports, job_id, 2, checkpoints=1)
        final = await ended(bus, job_id)
    assert final["state"] == "failed"
    lines = final["reason"].splitlines()
    assert lines[0].startswith("no recovery left (training.max_recoveries 1): aggregator") and "exit code -9" in lines[0], lines
    assert lines[1].startswith("attempt 1: aggregator") and "exit code -9" in lines[1], lines
    assert [r["attempt"] for r in final["recoveries"]] == [1]
