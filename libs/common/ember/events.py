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
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ember.envelope import Envelope, new_id, utcnow
from ember.topics import PARAM_PATTERN


NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME_PATTERN)]
"""A node's name: 1-63 letters, digits, '.', '_' or '-' (a DNS label; no control characters)."""
Id = Annotated[str, StringConstraints(pattern=PARAM_PATTERN)]
"""A job or actor id: what may stand in one topic level (`ember.topics.PARAM_PATTERN`)."""


class JobState(StrEnum):
    SUBMITTED = "submitted"
    BUILDING = "building"
    PLACING = "placing"
    DEPLOYING = "deploying"
    RUNNING = "running"
    RECOVERING = "recovering"  # the aggregator is being re-placed; it resumes from its checkpoint
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
    SERVER = "server"
    """An inference actor serving a registered model (`ember.actors.server`), not part of a job."""


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
    actor: Id
    role: Role
    node: NodeName
    index: int = 0


class ActorsPlaced(Event):
    generation: int = 1
    actors: list[Placement]
    reason: str = ""


class ActorStateChanged(Event):
    actor: Id
    node: NodeName
    role: Role
    state: ActorState
    exit_code: int | None = None
    reason: str = ""
    log_tail: str = ""


class JobRunning(Event):
    reason: str = "all actors running"


class JobRecovering(Event):
    """The aggregator of placement `generation` failed abnormally or was lost: the job's
    `attempt`-th recovery re-places it (generation + 1) and the new one resumes from the
    latest checkpoint."""

    generation: int
    attempt: int
    reason: str


class RoundCompleted(Event):
    round: int
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float = 0.0
    learners: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


class CheckpointSaved(Event):
    """The aggregator stored the checkpoint of `round` (sha256 `digest`): a new aggregator of the
    job resumes from the newest one it can read."""

    round: int
    digest: str


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
    node: NodeName
    info: dict[str, Any] = Field(default_factory=dict)


class NodeLost(Event):
    aggregate: ClassVar[str] = "node"
    node: NodeName
    reason: str = "offline"


class ModelServeRequested(Event):
    """Serve `model` (`version`, empty: the latest) on `nodes` and on every online node carrying
    all of `labels` (when given); `tag` names the data topic whose readings it also scores. The
    subject is the model; a later request for the same model replaces this one's version, tag
    and labels and adds its nodes."""

    aggregate: ClassVar[str] = "serving"
    model: str
    version: str = ""
    nodes: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    tag: str = ""


class ModelServeStopped(Event):
    """Stop serving `model` on `nodes` (empty: everywhere)."""

    aggregate: ClassVar[str] = "serving"
    model: str
    nodes: list[str] = Field(default_factory=list)


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
    node: NodeName
    cpus: int = Field(ge=0, le=1 << 20)
    memory_mb: int = Field(ge=0, le=1 << 40)
    capabilities: list[Role] = Field(default_factory=lambda: [Role.AGGREGATOR, Role.LEARNER], max_length=8)
    runtimes: list[Annotated[str, StringConstraints(max_length=32)]] = Field(default_factory=lambda: ["process"], max_length=8)
    data: dict[Annotated[str, StringConstraints(max_length=100)], Annotated[int, Field(ge=0, le=1 << 62)]] = Field(
        default_factory=dict, max_length=10_000
    )
    """Data tags held by the node's mldata -> row count."""
    mldata_url: str = Field(default="", max_length=2048)
    labels: dict[Annotated[str, StringConstraints(max_length=63)], Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict, max_length=64
    )
    """Free key=value labels (`site=plant-a`), from `EMBER_FLAMELET_LABELS` or `--label`; job
    placement and model serving can require them."""
    started: datetime = Field(default_factory=utcnow)


class NodeStatus(_Model):
    node: NodeName
    status: Annotated[str, StringConstraints(max_length=16)]  # online | offline
    since: datetime = Field(default_factory=utcnow)


class ActorSpec(_Model):
    """One actor a node should run: everything a flamelet needs to start it."""

    actor: Id
    job: Id
    role: Role
    runtime: str = "process"
    module: str
    """Python module run as `python -m <module>`, e.g. `ember.actors.probe`."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    artifact: Artifact


class DesiredState(_Model):
    node: NodeName
    revision: int = Field(ge=-1, le=2**63 - 1)
    """The event-log sequence the state was computed from: monotonic within one `epoch`, where an
    older revision is ignored."""
    epoch: str = Field(default="", max_length=64)
    """The publishing notifier's run (random at each start). A flamelet orders revisions only
    within one epoch and takes the first state of another epoch as it comes, so a revision far
    ahead (a stale or forged state) holds a node only until the notifier publishes again."""
    actors: list[ActorSpec] = Field(default_factory=list, max_length=10_000)


class JobPlacement(_Model):
    """Published (retained) by the notifier on `jobs/{job}/placement`: the actors of the job's current
    generation and their nodes (none once the job ended). An actor not listed is fenced."""

    job: str
    generation: int
    actors: list[Placement] = Field(default_factory=list)
    ended: bool = False


class ActorReport(_Model):
    """Published (retained) by a flamelet on `nodes/{node}/actors/{actor}/state`."""

    actor: Id
    job: Id
    node: NodeName
    role: Role
    state: ActorState
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31)
    reason: str = ""
    log_tail: str = ""
    pid: int | None = Field(default=None, ge=0, le=2**31)
    bytes_done: int | None = Field(default=None, ge=0)
    """While `pulling`: bytes of the image fetched so far (of `bytes_total` known so far)."""
    bytes_total: int | None = Field(default=None, ge=0)


class ActorLogLines(_Model):
    actor: Id
    job: Id
    lines: list[str]


class ServingStatus(_Model):
    """Published (retained) by a serving actor on `nodes/{node}/serving/{model}` once it answers."""

    model: str
    version: str
    node: str
    actor: str
    url: str
    """Base URL of its HTTP server: `POST {url}/invocations`."""
    tag: str = ""
    """The data tag whose readings it scores onto `nodes/{node}/predictions/{model}` (empty: none)."""
