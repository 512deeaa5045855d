"""Job requests as plain functions: validate, decide which event to append, shape the reply.

Nothing here knows MQTT or the event log; `handlers.py` decodes and `app.py` appends.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.errors import Conflict, InvalidRequest, NotFound
from ember.events import JobCancelled, JobSubmitted, fact_id
from ember.jobspec import submittable_spec
from ember.projection import TERMINAL_EVENT, JobView, Projection


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRequest(_Request):
    spec: Any
    spec_dir: str = ""


class JobRef(_Request):
    job: str


class GetRequest(JobRef):
    rounds: int | None = Field(default=None, ge=0)
    """Only the latest N rounds (a live view needs the newest, not all of them); None: all."""


class Empty(_Request):
    pass


T = TypeVar("T", bound=_Request)


def parse_request(model: type[T], data: dict[str, Any]) -> T:
    """The request's `data` as `model`, or InvalidRequest naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(data)", "reason": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
        raise InvalidRequest(f"invalid request: {summary}", details=details) from None


def job_id(name: str, request_id: str) -> str:
    """`{name}-{first 8 hex of the request envelope id}`: a retried request maps to the same job."""
    suffix = re.sub(r"[^0-9a-z]", "", request_id.lower())[:8]
    if not suffix:
        raise InvalidRequest(f"request id {request_id!r} has no usable characters for a job id")
    return f"{name}-{suffix}"


def submitted(request: SubmitRequest, request_id: str) -> tuple[str, str, JobSubmitted]:
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
