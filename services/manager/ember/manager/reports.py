"""What the manager records from flamelet and aggregator reports (plain functions).

A report is turned into the event to append (with its deterministic id) or into `Skip` with a
reason to log. Payloads that do not validate raise `ValueError` (pydantic's ValidationError is
one); `handlers.py` parses inside `ember.envelope.inbound()`, so the bus logs, counts
(`dropped_invalid`) and drops such a payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.envelope import Envelope
from ember.events import (
    ActorReport,
    ActorState,
    ActorStateChanged,
    CheckpointSaved,
    Event,
    JobResult,
    ResultReported,
    Role,
    RoundCompleted,
    fact_id,
)
from ember.projection import JobView
from ember.reasons import one_line, plain

ORDER = {
    ActorState.PENDING: 0,
    ActorState.PULLING: 1,
    ActorState.STARTING: 2,
    ActorState.RUNNING: 3,
    ActorState.EXITED: 4,
    ActorState.FAILED: 4,
    ActorState.LOST: 4,
}
MAX_LOG_TAIL = 16_000


@dataclass(frozen=True)
class Skip:
    """A well-formed report the manager does not record, and why (logged)."""

    reason: str
    quiet: bool = False
    """Routine (a retained report re-delivered after a restart): logged at debug level."""


def parse_actor_report(envelope: Envelope, params: dict[str, str]) -> ActorReport:
    """The report in `envelope`, checked against the topic it came on."""
    report = ActorReport.model_validate(envelope.data)
    if report.node != params.get("node") or report.actor != params.get("actor"):
        raise ValueError(f"report for {report.node}/{report.actor} published on the topic of {params.get('node')}/{params.get('actor')}")
    return report


def actor_event(report: ActorReport, job: JobView | None) -> tuple[str, ActorStateChanged] | Skip:
    """`{job}:{actor}:{state}` -> ActorStateChanged, or Skip for unknown / stale reports and for a
    report from a node the actor is not placed on (the topic's node, which the broker's ACL
    pins to the publishing node's identity, must be the placement's)."""
    if job is None:
        return Skip(f"unknown job {report.job}")
    actor = job.actors.get(report.actor)
    if actor is None:
        return Skip(f"job {report.job} has no actor {report.actor}")
    if actor.node != report.node:
        return Skip(f"actor {report.actor} is placed on {actor.node}, not {report.node}")
    if actor.generation < job.generation:
        return Skip(f"fenced: actor {report.actor} is of generation {actor.generation}, the job is at {job.generation}")
    if actor.state.terminal or ORDER[report.state] < ORDER[actor.state]:
        return Skip(f"stale report: actor is already {actor.state.value}", quiet=True)
    event = ActorStateChanged(
        actor=report.actor,
        node=report.node,
        role=actor.role,
        state=report.state,
        exit_code=report.exit_code,
        reason=one_line(report.reason),  # one plain bounded line; the full text is in the actor's log
        log_tail=plain(report.log_tail[-MAX_LOG_TAIL:]),
    )
    return fact_id(report.job, report.actor, report.state.value), event


Progress = RoundCompleted | CheckpointSaved | JobResult


def parse_progress(envelope: Envelope) -> Progress:
    """A progress report: a `RoundCompleted`, a `CheckpointSaved`, or the `JobResult` at the end of training."""
    if envelope.type == RoundCompleted.__name__:
        return RoundCompleted.model_validate(envelope.data)
    if envelope.type == CheckpointSaved.__name__:
        return CheckpointSaved.model_validate(envelope.data)
    if envelope.type == JobResult.__name__:
        return JobResult.model_validate(envelope.data)
    raise ValueError(f"expected a RoundCompleted or JobResult envelope on a progress topic, got {envelope.type!r}")


def progress_event(report: Progress, job: JobView | None, job_id: str, source: str = "") -> tuple[str, Event] | Skip:
    """For a known job: a round as `{job}:round:{n}`, a checkpoint as
    `{job}:checkpoint:{n}:{digest prefix}`, the final result as `{job}:result` (its metrics,
    MLflow run and model version).

    Only the job's aggregator reports progress: `source` (the envelope's) must name one of the
    job's aggregator actors, and one of the current generation (an aggregator a re-placement
    fenced is not heard). The broker's ACL is what makes `source` trustworthy: only the job's
    aggregator credential may publish on `jobs/{job}/progress`."""
    if job is None:
        return Skip(f"unknown job {job_id}")
    aggregators = {a.actor for a in job.actors.values() if a.role == Role.AGGREGATOR}
    if source not in aggregators:
        placed = ", ".join(sorted(aggregators)) or "none placed yet"
        return Skip(f"progress from {source[:80]!r}, not from the job's aggregator ({placed})")
    sender = job.actors[source]
    if sender.generation < job.generation:
        return Skip(f"fenced: {source} is of generation {sender.generation}, the job is at {job.generation}")
    if isinstance(report, CheckpointSaved):
        return fact_id(job_id, "checkpoint", report.round, report.digest[:16]), report
    if not isinstance(report, RoundCompleted):
        return fact_id(job_id, "result"), ResultReported(**report.model_dump())
    if report.round < 1:
        return Skip(f"round {report.round} is not a round number")
    return fact_id(job_id, "round", report.round), report
