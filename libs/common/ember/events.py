"""Typed domain events and the payloads of the node/actor topics.

An event is an `Envelope` whose `type` is one of the classes below and whose `data` validates
against that class. `subject` is the aggregate id (job id or node id). Event ids that must be
unique per fact are deterministic (`fact_id`), so a service that crashes and redoes its work
appends nothing twice: the log ignores a second append of the same id.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ember.envelope import Envelope, new_id, utcnow


class JobState(StrEnum):
    SUBMITTED = "submitted"
    BUILDING = "building"
    PLACING = "placing"
    DEPLOYING = "deploying"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ActorState(StrEnum):
    PENDING = "pending"
    PULLING = "pulling"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"  # exited(ok): exit code 0
    FAILED = "failed"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in (ActorState.EXITED, ActorState.FAILED, ActorState.LOST)


class Role(StrEnum):
    AGGREGATOR = "aggregator"
    LEARNER = "learner"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- domain events ---------------------------------------------------------------------------


class Event(_Model):
    """Base of every event's `data`; `aggregate` names the stream (`job` or `node`)."""

    aggregate: ClassVar[str] = "job"
    registry: ClassVar[dict[str, type[Event]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Event.registry[cls.__name__] = cls

    def envelope(self, subject: str, *, source: str, event_id: str | None = None) -> Envelope:
        return Envelope(
            id=event_id or new_id(),
            type=type(self).__name__,
            source=source,
            subject=subject,
            data=self.model_dump(mode="json"),
        )


class JobSubmitted(Event):
    spec: dict[str, Any]
    name: str
    spec_dir: str = ""
    """Folder the spec's relative `code.path` is resolved against."""


class BuildStarted(Event):
    reason: str = ""


class Artifact(_Model):
    kind: str = "venv"  # bundle | venv | image
    key: str
    """Content hash of code + requirements."""
    python: str = ""
    code_dir: str = ""
    image: str = ""
    cached: bool = False
    bundle: str = ""
    """`bundle`: digest of the code bundle a node fetches from `bundles/{digest}` (ember.bundle_bus)."""
    requirements: list[str] = Field(default_factory=list)
    """`bundle`: what a node installs next to the code (in a venv it caches by their hash)."""


class BuildSucceeded(Event):
    artifact: Artifact
    duration_s: float = 0.0


class BuildFailed(Event):
    reason: str
    log_tail: str = ""


class Placement(_Model):
    actor: str
    role: Role
    node: str
    index: int = 0


class ActorsPlaced(Event):
    generation: int = 1
    actors: list[Placement]
    reason: str = ""


class ActorStateChanged(Event):
    actor: str
    node: str
    role: Role
    state: ActorState
    exit_code: int | None = None
    reason: str = ""
    log_tail: str = ""


class JobRunning(Event):
    reason: str = "all actors running"


class RoundCompleted(Event):
    round: int
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float = 0.0
    learners: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


class JobResult(_Model):
    """What the aggregator publishes on `jobs/{job}/progress` once training succeeded: the final
    metrics, the MLflow run and the registered model version (empty when not tracked). A topic
    payload, not an event: it stands here as the fields of `ResultReported`."""

    metrics: dict[str, float] = Field(default_factory=dict)
    mlflow_run_id: str = ""
    model_version: str = ""


class ResultReported(JobResult, Event):
    """The aggregator's result of a finished training (its `JobResult` on `jobs/{job}/progress`)."""


class JobSucceeded(Event):
    reason: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    mlflow_run_id: str = ""
    model_version: str = ""


class JobFailed(Event):
    reason: str


class JobCancelled(Event):
    reason: str = "cancelled by user"


class NodeJoined(Event):
    aggregate: ClassVar[str] = "node"
    node: str
    info: dict[str, Any] = Field(default_factory=dict)


class NodeLost(Event):
    aggregate: ClassVar[str] = "node"
    node: str
    reason: str = "offline"


def fact_id(subject: str, *parts: object) -> str:
    """Deterministic event id for a fact that must be recorded once, e.g. `job1:state:running`."""
    return ":".join([subject, *map(str, parts)])


def parse_event(envelope: Envelope) -> Event:
    """The typed `data` of an event envelope; raises KeyError/ValidationError when unknown."""
    return Event.registry[envelope.type].model_validate(envelope.data)


def aggregate_of(event_type: str) -> str:
    cls = Event.registry.get(event_type)
    return cls.aggregate if cls else "other"


def event_streams(*, aggregate: str | None = None, without: Collection[str] = ()) -> list[tuple[str, str]]:
    """(aggregate, type) of every known event type (of one aggregate), the types in `without`
    left out: the `events/{aggregate}/{type}` topics a consumer subscribes to one by one."""
    return [
        (cls.aggregate, name)
        for name, cls in sorted(Event.registry.items())
        if name not in without and (aggregate is None or cls.aggregate == aggregate)
    ]


# --- node and actor topic payloads (the `data` of their envelopes) ----------------------------


class NodeInfo(_Model):
    node: str
    cpus: int
    memory_mb: int
    capabilities: list[Role] = Field(default_factory=lambda: [Role.AGGREGATOR, Role.LEARNER])
    runtimes: list[str] = Field(default_factory=lambda: ["process"])
    data: dict[str, int] = Field(default_factory=dict)
    """Data tags held by the node's mldata -> row count."""
    mldata_url: str = ""
    started: datetime = Field(default_factory=utcnow)


class NodeStatus(_Model):
    node: str
    status: str  # online | offline
    since: datetime = Field(default_factory=utcnow)


class ActorSpec(_Model):
    """One actor a node should run: everything a flamelet needs to start it."""

    actor: str
    job: str
    role: Role
    runtime: str = "process"
    module: str
    """Python module run as `python -m <module>`, e.g. `ember.actors.probe`."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    artifact: Artifact


class DesiredState(_Model):
    node: str
    revision: int
    """Monotonic (the event-log sequence the state was computed from); older revisions are ignored."""
    actors: list[ActorSpec] = Field(default_factory=list)


class ActorReport(_Model):
    """Published (retained) by a flamelet on `nodes/{node}/actors/{actor}/state`."""

    actor: str
    job: str
    node: str
    role: Role
    state: ActorState
    exit_code: int | None = None
    reason: str = ""
    log_tail: str = ""
    pid: int | None = None


class ActorLogLines(_Model):
    actor: str
    job: str
    lines: list[str]
