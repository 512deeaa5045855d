"""The manager's transition rules on a projection (pure: no broker, no database)."""

from __future__ import annotations

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
    Event,
    JobCancelled,
    JobRunning,
    JobSubmitted,
    Placement,
    Role,
)
from ember.manager.decide import decide
from ember.projection import Projection

pytestmark = pytest.mark.timeout(10)

JOB = "probe-1"
ROLES = {"agg": Role.AGGREGATOR, "l0": Role.LEARNER, "l1": Role.LEARNER, "l2": Role.LEARNER}


def projection(*events: Event, learners: dict | None = None) -> Projection:
    spec = {"name": "probe", "probe": {}, "learners": learners or {"count": 3, "min": 2}}
    placed = [Placement(actor=a, role=r, node=f"n-{a}", index=i) for i, (a, r) in enumerate(ROLES.items())]
    proj = Projection()
    base = [JobSubmitted(spec=spec, name="probe"), BuildStarted(), BuildSucceeded(artifact=Artifact(key="k")), ActorsPlaced(actors=placed)]
    for seq, event in enumerate([*base, *events], start=1):
        proj.apply(StoredEvent(seq, "job", Envelope(id=f"e{seq}", type=type(event).__name__, subject=JOB, data=event.model_dump(mode="json"))))
    return proj


def actor(name: str, state: ActorState, exit_code: int | None = None, log_tail: str = "") -> ActorStateChanged:
    return ActorStateChanged(actor=name, node=f"n-{name}", role=ROLES[name], state=state, exit_code=exit_code, log_tail=log_tail)


def running(*names: str) -> list[ActorStateChanged]:
    return [actor(n, ActorState.RUNNING) for n in names]


def decided(proj: Projection) -> list[tuple[str, str]]:
    return [(event_id, type(event).__name__) for event_id, event in decide(proj.jobs[JOB])]


def test_running_once_every_actor_runs():
    assert decided(projection(*running("agg", "l0", "l1"))) == []
    assert decided(projection(*running("agg", "l0", "l1", "l2"))) == [(f"{JOB}:running:1", "JobRunning")]


def test_aggregator_exit_0_succeeds_and_records_running_first_when_missing():
    done = actor("agg", ActorState.EXITED, 0)
    assert decided(projection(*running("l0"), done)) == [(f"{JOB}:running:1", "JobRunning"), (f"{JOB}:terminal", "JobSucceeded")]
    assert decided(projection(*running("agg", "l0", "l1", "l2"), JobRunning(), done)) == [(f"{JOB}:terminal", "JobSucceeded")]


@pytest.mark.parametrize("state", [ActorState.FAILED])
def test_aggregator_failed_fails_the_job_with_its_tail(state):
    """Exit code 1: the job itself failed (a lost or killed aggregator recovers: test_recovery)."""
    proj = projection(*running("agg", "l0"), actor("agg", state, 1, "a\nRuntimeError: strategy broke"))
    [(event_id, event)] = decide(proj.jobs[JOB])
    assert event_id == f"{JOB}:terminal" and type(event).__name__ == "JobFailed"
    assert event.reason.startswith(f"aggregator agg on n-agg {state.value}")
    assert event.reason.endswith("RuntimeError: strategy broke")


def test_learners_below_minimum_fail_but_one_loss_above_minimum_does_not():
    one_down = projection(*running("agg", "l0", "l1", "l2"), JobRunning(), actor("l1", ActorState.FAILED, 2, "boom"))
    assert decided(one_down) == []  # 2 left, minimum 2
    two_down = projection(*running("agg", "l0", "l1", "l2"), JobRunning(), actor("l1", ActorState.FAILED, 2, "boom"), actor("l2", ActorState.LOST))
    [(_, event)] = decide(two_down.jobs[JOB])
    assert "learner l1 on n-l1 failed with exit code 2: 1 learners left, minimum 2 (also down: l2)" in event.reason
    assert event.reason.endswith("; last output: boom")


def test_finished_learners_still_count_and_terminal_jobs_are_left_alone():
    exited = projection(*running("agg"), *[actor(n, ActorState.EXITED, 0) for n in ("l0", "l1", "l2")])
    assert decided(exited) == [(f"{JOB}:running:1", "JobRunning")]
    assert decide(projection().jobs[JOB]) == []  # deploying, nobody running yet
    assert decide(projection(JobCancelled(), actor("agg", ActorState.FAILED, 1)).jobs[JOB]) == []
