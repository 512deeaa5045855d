"""Job requests as plain functions: decide which event to append, shape the reply.

Nothing here knows MQTT or the event log: the bus validates each request against its model in
`ember.actions`, `handlers.py` hands it over and `core.py` appends.
"""

from __future__ import annotations

import re
from typing import Any

from ember.actions import SubmitJob
from ember.errors import Conflict, InvalidRequest, NotFound
from ember.events import JobCancelled, JobSubmitted, fact_id
from ember.jobspec import submittable_spec
from ember.projection import TERMINAL_EVENT, JobView, Projection


def job_id(name: str, request_id: str) -> str:
    """`{name}-{first 8 hex of the request envelope id}`: a retried request maps to the same job."""
    suffix = re.sub(r"[^0-9a-z]", "", request_id.lower())[:8]
    if not suffix:
        raise InvalidRequest(f"request id {request_id!r} has no usable characters for a job id")
    return f"{name}-{suffix}"


def submitted(request: SubmitJob, request_id: str) -> tuple[str, str, JobSubmitted]:
    """(job id, event id, JobSubmitted) for a valid spec; InvalidJobSpec names every bad field."""
    spec = submittable_spec(request.spec)
    if request.spec_dir and not request.spec_dir.startswith("/"):
        raise InvalidRequest(
            f"spec_dir must be an absolute path, got {request.spec_dir!r}",
            details=[{"field": "spec_dir", "reason": "not an absolute path"}],
        )
    job = job_id(spec.name, request_id)
    event = JobSubmitted(spec=spec.model_dump(mode="json"), name=spec.name, spec_dir=request.spec_dir)
    return job, fact_id(job, "submitted"), event


def find(projection: Projection, job: str) -> JobView:
    view = projection.jobs.get(job)
    if view is None:
        raise NotFound(f"no job {job!r}")
    return view


def cancelled(view: JobView) -> tuple[str, JobCancelled]:
    """(event id, JobCancelled) for a job that can still be cancelled; Conflict otherwise."""
    if view.state.terminal:
        raise Conflict(f"job {view.id} is already {view.state.value}: {view.reason}")
    return fact_id(view.id, TERMINAL_EVENT), JobCancelled(reason="cancelled by user")


def listing(projection: Projection) -> list[dict[str, Any]]:
    """Every job's summary without its rounds, oldest first."""
    out = []
    for view in sorted(projection.jobs.values(), key=lambda v: (v.submitted, v.id)):
        summary = view.summary(last_rounds=0)
        summary.pop("rounds")
        out.append(summary)
    return out
