"""Fencing: a node whose flamelet is killed with SIGKILL mid-job, in a real local stack (Mosquitto,
manager, builder, notifier, 3 flamelets each with a real mldata, learner and aggregator processes
running Flower).

- its learner is re-placed and the replacement joins the running job, which succeeds;
- the old learner never takes part in a round once fenced, stops by itself, and the job view
  shows it `lost`;
- a flamelet that comes back stops what is no longer desired before it says `online`;
- an actor whose flamelet died is stopped by its shim once no flamelet owns the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember import topics
from ember.bundle_bus import submit_job
from ember.bus import Bus, Message
from ember.devices.publish import put_table
from ember.envelope import Envelope
from ember.eventlog.base import StoredEvent
from ember.events import (
    ActorReport,
    ActorsPlaced,
    ActorState,
    ActorStateChanged,
    Artifact,
    BuildSucceeded,
    Event,
    JobResult,
    JobSubmitted,
    Placement,
    Role,
    RoundCompleted,
)
from ember.flamelet import shim
from ember.manager.reports import Skip, actor_event, progress_event
from ember.projection import JobView, Projection
from ember.stack import Stack
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(300)

APP_DIR = Path(__file__).parent / "fl_app"
sys.path.insert(0, str(APP_DIR))
from tiny_model import make_table  # noqa: E402

KEEPALIVE = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("ember-fencing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE=str(KEEPALIVE), EMBER_MLFLOW_TRACKING_URI="none",
               EMBER_LOG_FORMAT="json", TINY_FIT_SECONDS="0.2")
    with Stack(home, flamelets=3, env=env, grace=10) as running:
        for index, node in enumerate(running.nodes):
            info = json.loads(running.mldata_file(node).read_text())
            assert put_table(make_table(200, seed=index), "tiny", info["url"], info["token"]) == 200
        yield running


def tiny_spec(rounds: int) -> dict[str, Any]:
    return {
        "name": "fence",
        "code": {"path": ".", "entrypoint": "tiny_model:TinyModel"},
        "data": {"tags": ["tiny"]},
        "learners": {"count": 3, "min": 3},
        "training": {"rounds": rounds, "learning_rate": 0.1, "round_timeout": 60},
        "resources": {"cpus": 0.25, "memory_mb": 64},
        "runtime": "process",
    }


def probe_spec() -> dict[str, Any]:
    return {"name": "fence-probe", "learners": {"count": 3}, "probe": {"seconds": 300},
            "resources": {"cpus": 0.25, "memory_mb": 64}, "runtime": "process"}


async def job_view(bus: Bus, job: str) -> dict[str, Any]:
    return await bus.request("jobs.get", {"job": job}, timeout=10)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1]
    except OSError:
        return False
    return not state.startswith("Z")


async def child_of(shim_pid: int) -> int:
    """The actor's own process: the one child of its shim (the pid a flamelet reports), once started."""

    def children() -> list[str]:
        return Path(f"/proc/{shim_pid}/task/{shim_pid}/children").read_text().split()

    found = await assert_eventually(children, timeout=30, message=f"the shim {shim_pid} started no actor")
    assert len(found) == 1, found
    return int(found[0])


class Reports:
    """The actor states flamelets publish (retained), and node statuses as they arrive."""

    def __init__(self, bus: Bus) -> None:
        self.actors: dict[str, ActorReport] = {}
        self.on_status: list[Any] = []
        bus.subscribe(topics.ACTOR_STATE, self._on_state)
        bus.subscribe(topics.NODE_STATUS, self._on_status)

    async def _on_state(self, message: Message) -> None:
        assert message.envelope is not None
        report = ActorReport.model_validate(message.envelope.data)
        self.actors[report.actor] = report

    async def _on_status(self, message: Message) -> None:
        assert message.envelope is not None
        for hook in self.on_status:
            hook(message.envelope.data)


async def running_on_one_node(stack: Stack, bus: Bus, reports: Reports, job_id: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Once every actor runs: (the job view, a learner alone on its node, that node's flamelet)."""
    async def all_running() -> dict[str, Any] | None:
        current = await job_view(bus, job_id)
        actors = current["actors"]
        ok = current["state"] == "running" and all(reports.actors.get(a["actor"]) and reports.actors[a["actor"]].pid for a in actors)
        return current if ok else None

    view = await assert_eventually(all_running, timeout=120, interval=0.2, message=f"{job_id} never ran all its actors")
    aggregator_node = next(a["node"] for a in view["actors"] if a["role"] == "aggregator")
    victim = next(a for a in view["actors"] if a["role"] == "learner" and a["node"] != aggregator_node)
    return view, victim, f"node-{victim['node'].split('-')[1]}"


async def test_a_killed_flamelet_is_fenced_and_its_learner_replaced_in_the_running_job(stack: Stack) -> None:
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        reports = Reports(bus)
        job_id = (await submit_job(bus, tiny_spec(rounds=60), APP_DIR))["job"]
        view, victim, flamelet = await running_on_one_node(stack, bus, reports, job_id)

        async def rounds_done() -> bool:
            return len((await job_view(bus, job_id))["rounds"]) >= 2

        await assert_eventually(lambda: rounds_done(), timeout=60, interval=0.2)
        learner_pid = await child_of(reports.actors[victim["actor"]].pid or 0)
        stack.kill(flamelet)

        async def replaced() -> dict[str, Any] | None:
            current = await job_view(bus, job_id)
            old = next(a for a in current["actors"] if a["actor"] == victim["actor"])
            new = [a for a in current["actors"] if a["generation"] == 2 and a["role"] == "learner" and a["actor"] not in {x["actor"] for x in view["actors"]}]
            return current if old["state"] == "lost" and new else None

        current = await assert_eventually(replaced, timeout=60, interval=0.2, message="the lost node's learner was not re-placed")
        old = next(a for a in current["actors"] if a["actor"] == victim["actor"])
        assert old["reason"].startswith("fenced: re-placed in generation 2"), old
        replacement = next(a for a in current["actors"] if a["generation"] == 2 and a["actor"] not in {x["actor"] for x in view["actors"]})
        assert replacement["node"] != victim["node"]

        # the fenced learner stops by itself (its flamelet is dead): it saw its node's desired state drop it
        await assert_eventually(lambda: not alive(learner_pid), timeout=60, message="the fenced learner still runs")
        log = (stack.home / "nodes" / victim["node"] / "actors" / f"{victim['actor']}.log").read_text()
        assert '"learner.fenced"' in log, log[-2000:]

        async def ended() -> dict[str, Any] | None:
            view = await job_view(bus, job_id)
            return view if view["state"] in ("succeeded", "failed", "cancelled") else None

        final = await assert_eventually(ended, timeout=240, interval=0.5, message=f"{job_id} did not end")
    assert final["state"] == "succeeded", final["reason"]
    states = {a["actor"]: a["state"] for a in final["actors"]}
    assert states[victim["actor"]] == "lost", states
    # the replacement served until the aggregator said `done` (a learner still exiting when the job
    # ends is stopped by its flamelet: exited or failed)
    log = (stack.home / "nodes" / replacement["node"] / "actors" / f"{replacement['actor']}.log").read_text()
    assert '"learner.done"' in log and '"ok": true' in log, log[-2000:]
    rounds = final["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 61))
    joined = [r for r in rounds if replacement["actor"] in r["learners"]]
    assert joined, "the replacement never took part in a round"
    first = rounds.index(joined[0])
    assert all(victim["actor"] not in r["learners"] for r in rounds[first:]), "the fenced learner took part after its replacement joined"
    assert rounds[-1]["learners"] == sorted(a["actor"] for a in final["actors"] if a["role"] == "learner" and a["generation"] == 2)
    stack.restart(flamelet)
    stack.wait_ready(60)


async def test_the_aggregators_node_killed_its_replacement_finishes_the_job(stack: Stack) -> None:
    """The aggregator is re-placed too: the fenced one stops without telling the learners `done`, and
    the new one trains them to the end."""
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        reports = Reports(bus)
        job_id = (await submit_job(bus, tiny_spec(rounds=40), APP_DIR))["job"]
        view, _learner, _ = await running_on_one_node(stack, bus, reports, job_id)
        old = next(a for a in view["actors"] if a["role"] == "aggregator")
        flamelet = f"node-{old['node'].split('-')[1]}"

        async def rounds_done() -> bool:
            return len((await job_view(bus, job_id))["rounds"]) >= 2

        await assert_eventually(rounds_done, timeout=60, interval=0.2)
        aggregator_pid = await child_of(reports.actors[old["actor"]].pid or 0)
        stack.kill(flamelet)

        async def replaced() -> dict[str, Any] | None:
            current = await job_view(bus, job_id)
            state = next(a["state"] for a in current["actors"] if a["actor"] == old["actor"])
            return current if state == "lost" and current["state"] in ("recovering", "deploying", "running") else None

        await assert_eventually(replaced, timeout=60, interval=0.2, message="the lost aggregator was not re-placed")
        await assert_eventually(lambda: not alive(aggregator_pid), timeout=60, message="the fenced aggregator still runs")
        log = (stack.home / "nodes" / old["node"] / "actors" / f"{old['actor']}.log").read_text()
        assert '"aggregator.fenced"' in log, log[-2000:]

        async def ended() -> dict[str, Any] | None:
            current = await job_view(bus, job_id)
            return current if current["state"] in ("succeeded", "failed", "cancelled") else None

        final = await assert_eventually(ended, timeout=240, interval=0.5, message=f"{job_id} did not end")
    assert final["state"] == "succeeded", final["reason"]
    new = next(a for a in final["actors"] if a["role"] == "aggregator" and a["generation"] == 2)
    assert new["state"] == "exited" and new["node"] != old["node"], new
    # a recovery: running -> recovering -> running, the new aggregator resumed from a checkpoint
    assert [r["attempt"] for r in final["recoveries"]] == [1] and "node lost" in final["recoveries"][0]["reason"]
    assert "recovering" in [t["state"] for t in final["transitions"]]
    assert [r["round"] for r in final["rounds"]] == list(range(1, 41))
    log = (stack.home / "nodes" / new["node"] / "actors" / f"{new['actor']}.log").read_text()
    assert '"aggregator.resume"' in log, log[-2000:]
    current_learners = sorted(a["actor"] for a in final["actors"] if a["role"] == "learner" and a["generation"] == 2)
    assert final["rounds"][-1]["learners"] == current_learners
    stack.restart(flamelet)
    stack.wait_ready(60)


async def test_a_node_that_comes_back_stops_what_is_no_longer_desired_before_it_says_online(stack: Stack) -> None:
    async with Bus(stack.url, source="test", security=stack.security()) as bus:
        reports = Reports(bus)
        job_id = (await submit_job(bus, probe_spec(), APP_DIR))["job"]
        try:
            _view, victim, flamelet = await running_on_one_node(stack, bus, reports, job_id)
            shim_pid = reports.actors[victim["actor"]].pid or 0
            probe_pid = await child_of(shim_pid)
            stack.kill(flamelet)

            async def fenced() -> bool:
                old = next(a for a in (await job_view(bus, job_id))["actors"] if a["actor"] == victim["actor"])
                return old["state"] == "lost"

            await assert_eventually(fenced, timeout=60, interval=0.2, message="the lost node's probe was not fenced")
            assert alive(probe_pid), "a probe cannot watch its placement: it runs on until its node comes back"

            seen: list[tuple[str, bool]] = []  # (status, was the fenced probe alive when it arrived)
            reports.on_status.append(lambda data: seen.append((data["status"], alive(probe_pid))) if data["node"] == victim["node"] else None)
            stack.restart(flamelet)
            await assert_eventually(lambda: ("online", False) in seen or ("online", True) in seen, timeout=60)
            assert ("online", True) not in seen, seen
            assert not alive(shim_pid)
            old = next(a for a in (await job_view(bus, job_id))["actors"] if a["actor"] == victim["actor"])
            assert old["state"] == "lost", old
        finally:
            await bus.request("jobs.cancel", {"job": job_id}, timeout=10)
    stack.wait_ready(60)


def test_the_shim_stops_its_actor_once_no_flamelet_owns_the_node(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / "owner.pid").write_text(f"{owner.pid}\n")
        actor = subprocess.Popen(
            [sys.executable, "-I", shim.__file__, "--owner", str(tmp_path / "owner.pid"), "--orphan-grace", "1",
             str(tmp_path / "a.exit"), sys.executable, "-c", "import time; time.sleep(600)"],
            stderr=subprocess.PIPE,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            actor.wait(3)  # its owner lives: it runs on
        owner.kill()
        owner.wait()
        code = actor.wait(30)
        assert code == 128 + 15 and (tmp_path / "a.exit").read_text().strip() == "-15"
        assert actor.stderr is not None and b"no flamelet owns this actor" in actor.stderr.read()
    finally:
        for proc in (owner, actor if "actor" in locals() else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


# --- the control plane's half, as pure functions of the log ---------------------------------------


def folded(*events: Event) -> JobView:
    projection = Projection()
    for seq, event in enumerate(events, start=1):
        projection.apply(StoredEvent(seq, "job", Envelope(id=f"e{seq}", type=type(event).__name__, subject="j", data=event.model_dump(mode="json"))))
    return projection.jobs["j"]


def test_a_re_placement_fences_the_actors_it_leaves_out_and_the_manager_drops_their_reports() -> None:
    first = [Placement(actor="agg", role=Role.AGGREGATOR, node="n1", index=0),
             Placement(actor="l0", role=Role.LEARNER, node="n1", index=0), Placement(actor="l1", role=Role.LEARNER, node="n2", index=1)]
    second = [*first[:2], Placement(actor="l1-g2", role=Role.LEARNER, node="n3", index=1)]
    job = folded(
        JobSubmitted(spec={"name": "x", "probe": {}}, name="x"), BuildSucceeded(artifact=Artifact(key="k")), ActorsPlaced(actors=first),
        *(ActorStateChanged(actor=p.actor, node=p.node, role=p.role, state=ActorState.RUNNING) for p in first),
        ActorsPlaced(generation=2, actors=second, reason="node lost: n2; re-placed l1"),
        ActorStateChanged(actor="l1", node="n2", role=Role.LEARNER, state=ActorState.EXITED, exit_code=0),  # too late: fenced
    )
    actors = {a.actor: a for a in job.actors.values()}
    assert actors["l1"].state == ActorState.LOST and actors["l1"].reason == "fenced: re-placed in generation 2 (node lost: n2; re-placed l1)"
    assert actors["l0"].state == ActorState.RUNNING and actors["l0"].generation == 2, "a survivor keeps its state"
    assert {a.actor for a in job.current_actors()} == {"agg", "l0", "l1-g2"}

    late = ActorReport(actor="l1", job="j", node="n2", role=Role.LEARNER, state=ActorState.RUNNING)
    skipped = actor_event(late, job)
    assert isinstance(skipped, Skip) and skipped.reason.startswith("fenced: actor l1 is of generation 1")
    fresh = ActorReport(actor="l1-g2", job="j", node="n3", role=Role.LEARNER, state=ActorState.RUNNING)
    assert not isinstance(actor_event(fresh, job), Skip)

    # an aggregator left out by a re-placement is not heard either; the current one is
    third = [Placement(actor="agg-g3", role=Role.AGGREGATOR, node="n3", index=0), *second[1:]]
    job = folded(
        JobSubmitted(spec={"name": "x", "probe": {}}, name="x"), BuildSucceeded(artifact=Artifact(key="k")), ActorsPlaced(actors=first),
        ActorsPlaced(generation=2, actors=second), ActorsPlaced(generation=3, actors=third),
    )
    assert isinstance(progress_event(RoundCompleted(round=4), job, "j", "agg"), Skip)
    assert isinstance(progress_event(JobResult(), job, "j", "agg"), Skip)
    assert progress_event(RoundCompleted(round=4), job, "j", "agg-g3") == ("j:round:4", RoundCompleted(round=4))
