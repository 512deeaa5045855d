"""When a job recovers from losing its aggregator, and when it has recovered too often.

Shared by the manager (an aggregator that exits abnormally) and the notifier (an aggregator
whose node is lost): both append the same `JobRecovering` with the same id,
`{job}:recovering:{generation}`, so a loss is counted once whoever sees it first.

An aggregator exit is final, not recovered, when its exit code says the job itself failed
(`1`: e.g. too few learners left; `2`: bad configuration) or that it was stopped on purpose
(`143`, SIGTERM: a cancel). Any other failure (a signal such as SIGKILL, an out-of-memory kill,
a crash of the interpreter) and a lost actor are recovered, at most `training.max_recoveries`
times; past that the job fails naming every attempt's reason.
"""

from __future__ import annotations

from pydantic import ValidationError

from ember.events import ActorState, Event, JobFailed, JobRecovering, fact_id
from ember.jobspec import TrainingSpec
from ember.projection import TERMINAL_EVENT, ActorView, JobView

FINAL_EXIT_CODES = (1, 2, 143)


def max_recoveries(job: JobView) -> int:
    training = dict(job.spec.get("training") or {})
    try:
        return TrainingSpec.model_validate({"max_recoveries": training.get("max_recoveries", 3)}).max_recoveries
    except ValidationError:
        return 0


def recoverable(aggregator: ActorView) -> bool:
    """An aggregator lost with its node, or failed in a way that retrying can fix."""
    if aggregator.state == ActorState.LOST:
        return True
    return aggregator.state == ActorState.FAILED and aggregator.exit_code not in FINAL_EXIT_CODES


def awaiting_placement(job: JobView) -> bool:
    """The job recovers from the loss of its current generation's aggregator: re-place it."""
    return any(r["generation"] == job.generation for r in job.recoveries)


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def recover(job: JobView, reason: str) -> tuple[str, Event]:
    """`JobRecovering` for the current generation, or `JobFailed` once the attempts are used up
    (its first line says so, one line per attempt follows, then the last failure in full)."""
    attempts = [r["reason"] for r in job.recoveries]
    limit = max_recoveries(job)
    if len(attempts) >= limit:
        lines = [f"no recovery left (training.max_recoveries {limit}): {first_line(reason)}"]
        lines += [f"attempt {i}: {text}" for i, text in enumerate(attempts, 1)]
        lines += ["--- last failure ---", reason]
        return fact_id(job.id, TERMINAL_EVENT), JobFailed(reason="\n".join(lines))
    event = JobRecovering(generation=job.generation, attempt=len(attempts) + 1, reason=first_line(reason))
    return fact_id(job.id, "recovering", job.generation), event
