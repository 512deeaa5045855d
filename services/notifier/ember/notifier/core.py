"""The notifier's decisions, level-triggered from the projection and the node table.

`decide()` returns the events the notifier owes now, each with its deterministic id
(docs/control-plane.md): `{job}:placed:{generation}` for ActorsPlaced, `{job}:recovering:{generation}`
for JobRecovering (the aggregator's node is lost: `ember.recovery`) and `{job}:terminal` for
JobFailed. A recovering job gets its aggregator (and any actor on an offline node) re-placed,
on any online node but an offline one: its learners keep their ids and re-join the new one. Calling it again (after a crash, or on a view that has not caught up yet) is
harmless: the log ignores an id it already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ember.events import ActorsPlaced, Event, JobFailed, JobState, NodeInfo, fact_id
from ember.nodes import NodeTable
from ember.notifier.placement import NoCapacity, lost_actors, place_job, replace_lost
from ember.projection import TERMINAL_EVENT, JobView, Projection
from ember.recovery import awaiting_placement, recover


@dataclass(frozen=True)
class Decision:
    event_id: str
    job: str
    event: Event


@dataclass
class Outcome:
    decisions: list[Decision] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """job -> why it is still waiting for capacity."""


def placing_since(job: JobView) -> datetime:
    """When the job (last) entered `placing`: the start of its placement timeout."""
    for transition in reversed(job.transitions):
        if transition.state == JobState.PLACING:
            return transition.time
    return job.submitted


def decide(projection: Projection, nodes: NodeTable, *, now: datetime, timeout: float, overcommit: float = 1.0) -> Outcome:
    out = Outcome()
    online = nodes.online()
    offline = nodes.offline()
    for job in sorted(projection.jobs.values(), key=lambda j: (j.submitted, j.id)):
        if job.state == JobState.PLACING and job.generation == 0:
            _place(job, projection, online, out, now=now, timeout=timeout, overcommit=overcommit)
        elif job.state in (JobState.DEPLOYING, JobState.RUNNING, JobState.RECOVERING) and awaiting_placement(job):
            _recover(job, projection, online, offline, out, overcommit=overcommit)
        elif job.state in (JobState.DEPLOYING, JobState.RUNNING) and offline:
            _replace(job, projection, online, offline, out, overcommit=overcommit)
    return out


def _recover(job: JobView, projection: Projection, online: list[NodeInfo], offline: set[str], out: Outcome, *, overcommit: float) -> None:
    """Re-place the recovering job's aggregator and whatever else sits on an offline node."""
    aggregator = job.aggregator()
    lost = [a for a in lost_actors(job, offline) if a is not aggregator]
    if aggregator is not None:
        lost.insert(0, aggregator)
    generation = job.generation + 1
    try:
        placements = replace_lost(job, projection, online, lost, overcommit=overcommit, fenced=offline)
    except (NoCapacity, ValueError) as exc:
        out.decisions.append(Decision(fact_id(job.id, TERMINAL_EVENT), job.id, JobFailed(reason=f"cannot re-place the aggregator: {exc}")))
        return
    names = ", ".join(a.actor for a in lost)
    event = ActorsPlaced(generation=generation, actors=placements, reason=f"recovering: re-placed {names}")
    out.decisions.append(Decision(fact_id(job.id, "placed", generation), job.id, event))


def _place(job: JobView, projection: Projection, online: list[NodeInfo], out: Outcome, *, now: datetime, timeout: float, overcommit: float) -> None:
    try:
        placements = place_job(job, projection, online, overcommit=overcommit)
    except (NoCapacity, ValueError) as exc:
        if isinstance(exc, ValueError):
            out.decisions.append(Decision(fact_id(job.id, TERMINAL_EVENT), job.id, JobFailed(reason=f"cannot place: {exc}")))
            return
        waited = (now - placing_since(job)).total_seconds()
        if waited >= timeout:
            reason = f"no capacity: {exc} (waited {waited:.0f}s)"
            out.decisions.append(Decision(fact_id(job.id, TERMINAL_EVENT), job.id, JobFailed(reason=reason)))
        else:
            out.waiting[job.id] = str(exc)
        return
    nodes = sorted({p.node for p in placements})
    reason = f"{len(placements)} actors placed on {', '.join(nodes)}"
    out.decisions.append(Decision(fact_id(job.id, "placed", 1), job.id, ActorsPlaced(generation=1, actors=placements, reason=reason)))


def _replace(job: JobView, projection: Projection, online: list[NodeInfo], offline: set[str], out: Outcome, *, overcommit: float) -> None:
    lost = lost_actors(job, offline)
    if not lost:
        return
    aggregator = job.aggregator()
    if aggregator is not None and aggregator in lost:  # resumed from its checkpoint, once re-placed
        event_id, event = recover(job, f"node lost: {aggregator.node} (aggregator {aggregator.actor})")
        out.decisions.append(Decision(event_id, job.id, event))
        return
    gone = ", ".join(sorted({a.node for a in lost}))
    generation = job.generation + 1
    try:
        placements = replace_lost(job, projection, online, lost, overcommit=overcommit)
    except (NoCapacity, ValueError) as exc:
        reason = f"node lost: {gone}"
        out.decisions.append(Decision(fact_id(job.id, TERMINAL_EVENT), job.id, JobFailed(reason=f"{reason} ({exc})")))
        return
    names = ", ".join(a.actor for a in lost)
    reason = f"node lost: {gone}; re-placed {names}"
    event = ActorsPlaced(generation=generation, actors=placements, reason=reason)
    out.decisions.append(Decision(fact_id(job.id, "placed", generation), job.id, event))
