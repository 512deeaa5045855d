"""The manager's half of the job state machine, level-triggered from the projection.

`decide(job)` looks at a job's current actors and returns the transitions the manager owes it,
each with its deterministic id (docs/control-plane.md). Calling it again after a crash or on a
stale view is harmless: the log ignores an id it already holds, and a job has one terminal event.

- `deploying` -> `running` once every actor of the current generation has reached `running`
  (an actor that already exited ok counts: it ran).
- aggregator `exited` (code 0) -> `succeeded` (preceded by `running` if that was never recorded,
  e.g. the manager was down while the whole job ran).
- aggregator `lost`, or `failed` abnormally (`ember.recovery.recoverable`) -> `recovering`
  (`JobRecovering`, once per generation; the notifier then re-places it and the job stays
  `recovering` until the new generation's actors run, then `running`), or `failed` naming
  every attempt once `training.max_recoveries` are used up.
- aggregator `failed` otherwise -> `failed`, with the last line of its log tail.
- learners of the current generation that are not failed/lost < `learners.min` -> `failed`,
  naming the failed learner, its exit code and the last line of its log tail.
- `deploying` for longer than `deploy_timeout` seconds -> `failed`, naming every actor that has
  not reached `running`, its node and its last state (a node that never answers, or is gone).

A `JobFailed` reason is one plain line of bounded length (`ember.reasons.one_line`); the actor's
log tail stays in its own `ActorStateChanged.log_tail`, and the whole log on its node.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import ValidationError

from ember.events import ActorState, Event, JobFailed, JobRunning, JobState, JobSucceeded, fact_id
from ember.jobspec import LearnerSpec
from ember.projection import TERMINAL_EVENT, ActorView, JobView
from ember.recovery import awaiting_placement, recover, recoverable
from ember.reasons import last_line, one_line

REACHED_RUNNING = (ActorState.RUNNING, ActorState.EXITED)
DOWN = (ActorState.FAILED, ActorState.LOST)

Decision = tuple[str, Event]
DESCRIBED_REASON = 200
"""Characters of an actor's own reason quoted in a job's reason (which also names the count
left and the actor's last output, within `ember.reasons.MAX_REASON`)."""


def minimum_learners(job: JobView) -> int:
    """`learners.min` of the job's spec (default: `learners.count`)."""
    try:
        return LearnerSpec.model_validate(job.spec.get("learners") or {}).minimum
    except ValidationError:
        return 1


def describe(actor: ActorView) -> str:
    """`learner l1 on node-a failed with exit code 3 (reason)`."""
    how = actor.state.value
    if actor.exit_code is not None:
        how += f" with exit code {actor.exit_code}"
    text = f"{actor.role.value} {actor.actor} on {actor.node} {how}"
    if actor.reason:
        text += f" ({one_line(actor.reason, DESCRIBED_REASON)})"
    return text


def with_tail(reason: str, actor: ActorView) -> str:
    """`reason; last output: <the last line the actor printed>`, as one plain bounded line."""
    last = last_line(actor.log_tail)
    return one_line(f"{reason}; last output: {last}" if last else reason)


def deploy_overdue(job: JobView, actors: list[ActorView], now: datetime, timeout: float) -> str | None:
    """The JobFailed reason when `job` has been deploying for more than `timeout` seconds."""
    if job.state != JobState.DEPLOYING or not job.transitions or job.transitions[-1].state != JobState.DEPLOYING:
        return None
    waited = (now - job.transitions[-1].time).total_seconds()
    if waited <= timeout:
        return None
    late = [f"{a.actor} on {a.node} ({a.state.value})" for a in actors if a.state not in REACHED_RUNNING]
    return one_line(f"deployment timed out after {timeout:g}s: no running report from " + ", ".join(late))


def decide(job: JobView, *, now: datetime | None = None, deploy_timeout: float | None = None) -> list[Decision]:
    """Transitions the manager owes `job` now, in the order they must be appended (`now` and
    `deploy_timeout`: fail a deployment that has waited too long)."""
    if job.state not in (JobState.DEPLOYING, JobState.RUNNING, JobState.RECOVERING) or job.generation == 0:
        return []
    if awaiting_placement(job):
        return []  # the notifier re-places the lost aggregator
    actors = job.current_actors()
    if not actors:
        return []
    terminal = fact_id(job.id, TERMINAL_EVENT)
    running_id = fact_id(job.id, "running", job.generation)
    aggregator = job.aggregator()
    if aggregator is not None and recoverable(aggregator):
        return [recover(job, describe(aggregator))]
    if aggregator is not None and aggregator.state in DOWN:
        return [(terminal, JobFailed(reason=with_tail(describe(aggregator), aggregator)))]
    if aggregator is not None and aggregator.state == ActorState.EXITED:
        out: list[Decision] = []
        if job.state in (JobState.DEPLOYING, JobState.RECOVERING):
            out.append((running_id, JobRunning(reason="actors ran; aggregator finished")))
        metrics = job.result.get("metrics") or (dict(job.rounds[-1].get("metrics", {})) if job.rounds else {})
        tracked = {k: job.result[k] for k in ("mlflow_run_id", "model_version") if job.result.get(k)}
        out.append((terminal, JobSucceeded(reason="aggregator exited with code 0", metrics=metrics, **tracked)))
        return out
    learners = job.learners()
    down = sorted((a for a in learners if a.state in DOWN), key=lambda a: (a.index, a.actor))
    alive = len(learners) - len(down)
    minimum = minimum_learners(job)
    if down and alive < minimum:
        first = down[0]
        reason = f"{describe(first)}: {alive} learners left, minimum {minimum}"
        if len(down) > 1:
            reason += " (also down: " + ", ".join(a.actor for a in down[1:]) + ")"
        return [(terminal, JobFailed(reason=with_tail(reason, first)))]
    if job.state in (JobState.DEPLOYING, JobState.RECOVERING) and all(a.state in REACHED_RUNNING for a in actors):
        if job.state == JobState.RECOVERING:
            return [(running_id, JobRunning(reason=f"resumed from the latest checkpoint on {aggregator.node if aggregator else '?'}"))]
        return [(running_id, JobRunning(reason=f"all {len(actors)} actors running"))]
    if now is not None and deploy_timeout is not None:
        overdue = deploy_overdue(job, actors, now, deploy_timeout)
        if overdue is not None:
            return [(terminal, JobFailed(reason=overdue))]
    return []
