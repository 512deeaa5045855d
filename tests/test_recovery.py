"""Recovery from a lost aggregator as the manager and the notifier decide it (pure: a projection
fed with events, a node table; no broker): running -> recovering -> running, the aggregator
re-placed with generation + 1 while the learners keep their ids, the limit, the reasons."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ember.envelope import Envelope
from ember.eventlog.base import StoredEvent
from ember.events import (
    ActorsPlaced,
    ActorState,
    ActorStateChanged,
    Artifact,
    BuildStarted,
    BuildSucceeded,
    CheckpointSaved,
    Event,
    JobRunning,
    JobState,
    JobSubmitted,
    NodeInfo,
    NodeStatus,
    Placement,
    Role,
)
from ember.manager.decide import decide
from ember.nodes import NodeTable
from ember.notifier import core as notifier
from ember.projection import Projection

pytestmark = pytest.mark.timeout(30)

JOB = "fit-1"
NODES = ("n-a", "n-b", "n-c")


class Log:
    """A projection fed one event at a time, as every service folds the log."""

    def __init__(self, max_recoveries: int = 3) -> None:
        self.proj = Projection()
        self.seq = 0
        spec = {"name": "fit", "learners": {"count": 2, "min": 2}, "training": {"rounds": 5, "max_recoveries": max_recoveries}}
        placed = [
            Placement(actor=f"{JOB}-aggregator", role=Role.AGGREGATOR, node="n-a"),
            Placement(actor=f"{JOB}-learner-0", role=Role.LEARNER, node="n-b", index=0),
            Placement(actor=f"{JOB}-learner-1", role=Role.LEARNER, node="n-c", index=1),
        ]
        self.add(JobSubmitted(spec=spec, name="fit"), BuildStarted(), BuildSucceeded(artifact=Artifact(key="k")), ActorsPlaced(actors=placed))
        self.add(*(self.state(a, ActorState.RUNNING) for a in self.job.current_actors()))
        self.add(JobRunning(), CheckpointSaved(round=2, digest="ab" * 32))

    @property
    def job(self):
        return self.proj.jobs[JOB]

    def add(self, *events: Event) -> None:
        for event in events:
            self.seq += 1
            envelope = Envelope(id=f"e{self.seq}", type=type(event).__name__, subject=JOB, data=event.model_dump(mode="json"))
            self.proj.apply(StoredEvent(self.seq, "job", envelope))

    def state(self, actor, state: ActorState, exit_code: int | None = None) -> ActorStateChanged:
        return ActorStateChanged(actor=actor.actor, node=actor.node, role=actor.role, state=state, exit_code=exit_code)

    def manager(self) -> list[Event]:
        decided = decide(self.job)
        self.add(*(event for _id, event in decided))
        return [event for _id, event in decided]

    def notifier(self, nodes: NodeTable) -> list[Event]:
        outcome = notifier.decide(self.proj, nodes, now=datetime.now(UTC), timeout=60)
        events = [d.event for d in outcome.decisions]
        self.add(*events)
        return events


def table(offline: tuple[str, ...] = ()) -> NodeTable:
    nodes = NodeTable()
    for name in NODES:
        nodes.update_info(NodeInfo(node=name, cpus=4, memory_mb=8192, capabilities=[Role.AGGREGATOR, Role.LEARNER], runtimes=["process"]))
        nodes.update_status(NodeStatus(node=name, status="offline" if name in offline else "online"))
    return nodes


def kill_aggregator(log: Log) -> None:
    log.add(log.state(log.job.aggregator(), ActorState.FAILED, exit_code=-9))


def test_killed_aggregator_recovers_on_a_new_generation_with_the_same_learners():
    log = Log()
    learners = [a.actor for a in log.job.learners()]
    kill_aggregator(log)
    [recovering] = log.manager()
    assert type(recovering).__name__ == "JobRecovering" and recovering.attempt == 1
    assert log.job.state == JobState.RECOVERING and "exit code -9" in log.job.reason
    assert log.manager() == []  # waits for the notifier
    [placed] = log.notifier(table())
    assert isinstance(placed, ActorsPlaced) and placed.generation == 2
    assert log.job.state == JobState.RECOVERING
    new = log.job.aggregator()
    assert new is not None and new.actor.endswith("-g2") and new.state == ActorState.PENDING
    assert [a.actor for a in log.job.learners()] == learners and all(a.state == ActorState.RUNNING for a in log.job.learners())
    assert log.manager() == []
    log.add(log.state(new, ActorState.RUNNING))
    [running] = log.manager()
    assert isinstance(running, JobRunning) and log.job.state == JobState.RUNNING
    states = [t.state for t in log.job.transitions]
    assert states[-3:] == [JobState.RUNNING, JobState.RECOVERING, JobState.RUNNING]
    summary = log.job.summary()
    assert summary["recoveries"][0]["attempt"] == 1 and summary["checkpoint"]["round"] == 2


def test_aggregator_node_lost_recovers_on_another_node():
    log = Log()
    [recovering] = log.notifier(table(offline=("n-a",)))
    assert type(recovering).__name__ == "JobRecovering" and "node lost: n-a" in recovering.reason
    [placed] = log.notifier(table(offline=("n-a",)))
    assert isinstance(placed, ActorsPlaced)
    assert log.job.aggregator().node != "n-a"


def test_a_failed_job_is_not_recovered():
    log = Log()
    log.add(log.state(log.job.aggregator(), ActorState.FAILED, exit_code=1))  # e.g. too few learners
    [failed] = log.manager()
    assert type(failed).__name__ == "JobFailed" and log.job.state == JobState.FAILED


def test_past_the_limit_the_job_fails_naming_every_attempt():
    log = Log(max_recoveries=2)
    for attempt in (1, 2):
        kill_aggregator(log)
        [recovering] = log.manager()
        assert recovering.attempt == attempt
        log.notifier(table())
    kill_aggregator(log)
    [failed] = log.manager()
    assert type(failed).__name__ == "JobFailed" and log.job.state == JobState.FAILED
    lines = failed.reason.splitlines()
    assert lines[0].startswith("no recovery left (training.max_recoveries 2): aggregator fit-1-aggregator-g3")
    assert lines[1].startswith("attempt 1: aggregator fit-1-aggregator on n-a failed with exit code -9")
    assert lines[2].startswith("attempt 2: aggregator fit-1-aggregator-g2")
