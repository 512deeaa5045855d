"""The requests the manager answers, declared once: each action's name, request model and reply model.

The manager serves them (`Bus.serve(action, handler)`), the CLI and any MQTT client send them
(`Bus.request(action, data)`), and `ember asyncapi` documents them from `ACTIONS`.

    A request is an envelope of type `request.<action>` on `req/<action>` whose `data` is the
    action's request model; its reply, on the requester's MQTT 5 response topic, is an envelope of
    type `reply` whose `data` is `{"ok": true, "result": <reply model>}` or
    `{"ok": false, "error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from ember.errors import InvalidRequest
from ember.events import ActorState, Artifact, CheckpointSaved, JobRecovering, JobResult, JobState, Role, RoundCompleted
from ember.topics import PARAM_PATTERN

REPLY_TYPE = "reply"
"""The envelope `type` of every reply."""

Name = Annotated[str, StringConstraints(pattern=PARAM_PATTERN)]
"""A job, node or actor id: what may stand in one topic level."""


class Payload(BaseModel):
    """Base of request and reply payloads: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------


class SubmitJob(Payload):
    """`req/jobs.submit`: the job spec (YAML as JSON), its code as `code.bundle` (published first
    on `bundles/{digest}`) or `code.git`. `spec_dir` is accepted from older clients and not used."""

    spec: dict[str, Any]
    spec_dir: str = Field(default="", max_length=4096)


class JobRef(Payload):
    """`req/jobs.cancel`: one job id."""

    job: Name


class GetJob(JobRef):
    """`req/jobs.get`: one job id; `rounds` keeps only the latest N rounds (default: all)."""

    rounds: int | None = Field(default=None, ge=0, le=1_000_000)


class ServeModel(Payload):
    """`req/models.serve`: serve a registered MLflow model (version empty: the latest) on the named
    nodes and on every online node carrying all of `labels`; `tag`: also score that data topic."""

    model: Name
    version: Annotated[str, StringConstraints(pattern=r"^[0-9]*$")] = ""
    nodes: list[Name] = Field(default_factory=list, max_length=1000)
    labels: dict[str, str] = Field(default_factory=dict)
    tag: Annotated[str, StringConstraints(pattern=f"(^$)|({PARAM_PATTERN})")] = ""


class StopServing(Payload):
    """`req/models.stop`: stop serving `model` on `nodes` (empty: everywhere)."""

    model: Name
    nodes: list[Name] = Field(default_factory=list, max_length=1000)


class NoArguments(Payload):
    """`req/jobs.list`, `req/nodes.list`: no arguments."""


# --- replies -----------------------------------------------------------------------------------


class Submitted(Payload):
    """The job id a submitted spec got (a retried request gets the same one)."""

    job: str
    state: JobState


class Transition(Payload):
    state: JobState
    time: datetime
    reason: str
    seq: int


class ActorSummary(Payload):
    actor: str
    role: Role
    node: str
    state: ActorState
    exit_code: int | None = None
    reason: str = ""
    generation: int = 1
    log_tail: str = ""


class JobOutcome(JobResult):
    """How a job ended: the aggregator's result (final metrics, MLflow run, model version) and the reason."""

    reason: str = ""


class JobListItem(Payload):
    """A job as `jobs.list` shows it: everything but its rounds."""

    job: str
    name: str
    state: JobState
    reason: str = ""
    submitted: datetime
    transitions: list[Transition] = Field(default_factory=list)
    actors: list[ActorSummary] = Field(default_factory=list)
    rounds_completed: int = 0
    rounds_planned: int = 0
    result: JobOutcome = Field(default_factory=JobOutcome)
    artifact: Artifact | None = None
    recoveries: list[JobRecovering] = Field(default_factory=list)
    """Every recovery from a lost aggregator: generation, attempt, reason."""
    checkpoint: CheckpointSaved | None = None
    """The latest checkpoint the aggregator stored."""


class JobSummary(JobListItem):
    """A job as `jobs.get` and `jobs.cancel` return it, with its (latest) rounds."""

    rounds: list[RoundCompleted] = Field(default_factory=list)


class NodeActor(Payload):
    actor: str
    job: str
    role: Role
    state: ActorState
    url: str = ""
    """A serving actor's HTTP endpoint, once it answers (`POST {url}/invocations`)."""


class Serving(Payload):
    """Where a model is served: the request's selectors and the nodes they resolve to now."""

    model: str
    version: str = ""
    tag: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    nodes: list[str] = Field(default_factory=list)


class NodeSummary(Payload):
    """A node as `nodes.list` shows it: status (`online`, `offline`, `unknown`), its info as last
    announced (`NodeInfo` fields; empty when never announced) and the actors of live jobs on it."""

    node: str
    status: str
    since: datetime | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    actors: list[NodeActor] = Field(default_factory=list)


class ReplyError(Payload):
    code: str = Field(description="stable error code: invalid_request, invalid_job_spec, not_found, conflict, timeout, unavailable, internal")
    message: str
    details: Any = None


class Failure(Payload):
    """The `data` of a reply that carries an error."""

    ok: Literal[False]
    error: ReplyError


# --- the catalogue -----------------------------------------------------------------------------

R = TypeVar("R", bound=Payload)


@dataclass(frozen=True)
class Action(Generic[R]):
    """One request the manager answers: `request` validates its `data`, `reply` its result."""

    name: str
    request: type[R]
    reply: Any
    """A payload model, or `list[<model>]`."""
    summary: str
    replies: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "replies", TypeAdapter(self.reply))

    def parse(self, data: dict[str, Any]) -> R:
        """The request's `data` as the request model, or InvalidRequest naming each bad field."""
        try:
            return self.request.model_validate(data)
        except ValidationError as exc:
            raise invalid_request(exc) from None

    def result(self, value: Any) -> Any:
        """A handler's return value checked against the reply model, as JSON-compatible data
        (fields left at their default are omitted). Raises ValidationError when it does not fit."""
        return self.replies.dump_python(self.replies.validate_python(value), mode="json", exclude_unset=True)


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """InvalidRequest with one `{field, reason}` per validation error."""
    details = [
        {"field": ".".join(str(p) for p in err["loc"]) or "(data)", "reason": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
    return InvalidRequest(f"invalid request: {summary}", details=details)


JOBS_SUBMIT = Action("jobs.submit", SubmitJob, Submitted, "submit a job spec; the reply names the job")
JOBS_CANCEL = Action("jobs.cancel", JobRef, JobSummary, "cancel a job that has not ended")
JOBS_GET = Action("jobs.get", GetJob, JobSummary, "one job's state, transitions, actors and rounds")
JOBS_LIST = Action("jobs.list", NoArguments, list[JobListItem], "every job, oldest first")
MODELS_SERVE = Action("models.serve", ServeModel, Serving, "serve a registered model on nodes (by name or labels)")
MODELS_STOP = Action("models.stop", StopServing, Serving, "stop serving a model on nodes (or everywhere)")
MODELS_SERVING = Action("models.serving", NoArguments, list[Serving], "every served model and its nodes")
NODES_LIST = Action("nodes.list", NoArguments, list[NodeSummary], "every known node with its status, info and actors")

ACTIONS: dict[str, Action[Any]] = {a.name: a for a in (JOBS_SUBMIT, JOBS_CANCEL, JOBS_GET, JOBS_LIST, NODES_LIST,
                                                     MODELS_SERVE, MODELS_STOP, MODELS_SERVING)}
