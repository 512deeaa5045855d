"""The job spec (YAML), validated by pydantic. Errors name each bad field and the reason.

```yaml
name: sensor-anomaly
code:
  path: .                       # folder with the user's code, relative to the job file
  # bundle: sha256:...          # what `ember job submit` sends instead of `path` (ember.bundle)
  # git: https://...  ref: main # or a git source the builder clones
  entrypoint: model:SensorModel # a ModelManager class ...
  # serverapp: app:server       # ... or a Flower app's components
  # clientapp: app:client
  requirements: [scikit-learn]  # or a file name: requirements.txt
data: {tags: [sensors]}
learners: {count: 3, min: 2}
training: {rounds: 5, strategy: FedAvg, strategy_params: {}, local_epochs: 1, batch_size: 32,
           learning_rate: 0.05, fraction_train: 1.0, fraction_evaluate: 1.0, round_timeout: 60}
resources: {cpus: 1, memory_mb: 1024}
tracking: {experiment: sensor-anomaly, model_name: sensor-anomaly}
runtime: process
placement: {labels: {site: plant-a}}  # only nodes announcing every one of these labels
```

Every field is bounded (numbers, string lengths, list sizes; floats are finite), and the same
models validate at submit (manager), at build (builder), at placement (notifier) and at run
(actors, the probe): what the manager accepts runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ember.errors import InvalidJobSpec

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


MAX_SECONDS = 7 * 24 * 3600.0
"""The longest duration a spec may ask for (probe run time, round timeout): a week."""
MAX_STRING = 4096

Text = Annotated[str, StringConstraints(max_length=MAX_STRING, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""A string without control characters, at most MAX_STRING characters."""
Label = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=MAX_STRING)


class CodeSpec(_Spec):
    path: Text | None = None
    """A folder on the submitter's disk; `ember job submit` replaces it with `bundle`."""
    bundle: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    """Digest of the code bundle published on `bundles/{digest}` (`ember.bundle`)."""
    git: Text | None = None
    ref: Label = "HEAD"
    entrypoint: str | None = None
    """`module:Class` of a `ember.sdk.ModelManager` subclass."""
    serverapp: str | None = None
    clientapp: str | None = None
    requirements: Annotated[list[Text], Field(max_length=500)] | Label = Field(default_factory=list)

    @field_validator("entrypoint", "serverapp", "clientapp")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not REF_RE.match(value):
            raise ValueError(f"must look like 'module:Name', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CodeSpec:
        if sum(1 for source in (self.path, self.bundle, self.git) if source) > 1:
            raise ValueError("give one of 'path', 'bundle' or 'git'")
        if (self.serverapp is None) != (self.clientapp is None):
            raise ValueError("a Flower app needs both 'serverapp' and 'clientapp'")
        if self.entrypoint and self.serverapp:
            raise ValueError("give either 'entrypoint' (a ModelManager) or 'serverapp'/'clientapp' (a Flower app)")
        return self


class DataSpec(_Spec):
    tags: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", tag):
                raise ValueError(f"invalid tag {tag!r} (letters, digits, '_', '.', '-')")
        return tags


class LearnerSpec(_Spec):
    count: int = Field(3, ge=1, le=1000)
    min: int | None = Field(None, ge=1, le=1000)
    """Minimum learners to start a round and to keep the job alive (default: count)."""

    @model_validator(mode="after")
    def _min(self) -> LearnerSpec:
        if self.min is not None and self.min > self.count:
            raise ValueError(f"min ({self.min}) cannot exceed count ({self.count})")
        return self

    @property
    def minimum(self) -> int:
        return self.min if self.min is not None else self.count


class TrainingSpec(_Spec):
    rounds: int = Field(3, ge=1, le=100_000)
    strategy: Label = "FedAvg"
    strategy_params: dict[Label, Any] = Field(default_factory=dict, max_length=64)
    local_epochs: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=10_000_000)
    learning_rate: float = Field(0.01, gt=0, le=1e6)
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    round_timeout: float = Field(120.0, gt=0, le=MAX_SECONDS)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """numpy's seed range."""
    update_codec: Literal["none", "float16", "int8"] = "none"
    """How learners encode their updates to the aggregator (`ember.fl.codecs`); `none` is exact."""
    checkpoints: int = Field(3, ge=0, le=1000)
    """Checkpoints kept per job (the newest; 0: none, and a resumed job starts over)."""
    checkpoint_interval: float = Field(2.0, ge=0, le=86_400)
    """Seconds between the starts of two checkpoint writes (the newest round's is written;
    0: every round, when writes keep up). A resume redoes at most about this long of rounds."""
    max_recoveries: int = Field(3, ge=0, le=100)
    """How often a job may resume after losing its aggregator before it fails."""

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, name: str) -> str:
        from ember.fl.strategies import strategy_class  # flwr is imported lazily

        strategy_class(name)
        return name

    @field_validator("strategy_params")
    @classmethod
    def _params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from ember.fl.strategies import validate_strategy

        for key, value in params.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number")
            if isinstance(value, int) and not -(2**53) <= value <= 2**53:
                raise ValueError(f"{key}: out of range (at most 2**53 in magnitude)")
            if isinstance(value, str) and len(value) > 200:
                raise ValueError(f"{key}: at most 200 characters")
        if "strategy" in info.data:  # an unknown strategy is reported on its own field
            validate_strategy(info.data["strategy"], params)
        return params


class ResourceSpec(_Spec):
    cpus: float = Field(1.0, gt=0, le=4096)
    memory_mb: int = Field(1024, ge=16, le=1 << 30)


class TrackingSpec(_Spec):
    experiment: Label | None = None
    model_name: Label | None = None


class ProbeSpec(_Spec):
    """Probe actors (`ember.actors.probe`) instead of ML code: run for `seconds`, exit with a code."""

    seconds: float = Field(1.0, ge=0, le=MAX_SECONDS)
    exit_code: int = Field(0, ge=0, le=255)
    """A process exit status."""
    aggregator_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS)
    failing_learner: int | None = Field(None, ge=0, le=999)
    """Index of one learner that exits with `exit_code` (others exit 0); None: all use it."""


class PlacementSpec(_Spec):
    """Which nodes may take the job's actors: those announcing every label here (`NodeInfo.labels`)."""

    labels: dict[str, str] = Field(default_factory=dict)


class JobSpec(_Spec):
    name: str
    code: CodeSpec = Field(default_factory=CodeSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    learners: LearnerSpec = Field(default_factory=LearnerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    runtime: Literal["process", "docker"] = "process"
    probe: ProbeSpec | None = None
    placement: PlacementSpec = Field(default_factory=PlacementSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError("must be 1-63 lowercase letters, digits or '-', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _code(self) -> JobSpec:
        if self.probe is None and not (self.code.entrypoint or self.code.serverapp):
            raise ValueError("code needs 'entrypoint' (module:ModelManager) or 'serverapp' + 'clientapp' (or use 'probe')")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or self.name


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        out.append({"field": loc, "reason": err["msg"].removeprefix("Value error, ")})
    return out


def validate_spec(raw: Any) -> JobSpec:
    """A validated JobSpec, or InvalidJobSpec whose details name every bad field."""
    if not isinstance(raw, dict):
        raise InvalidJobSpec("a job spec must be a mapping", details=[{"field": "(spec)", "reason": "not a mapping"}])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        errors = field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        raise InvalidJobSpec(f"invalid job spec: {summary}", details=errors) from None


def submittable_spec(raw: Any) -> JobSpec:
    """`validate_spec`, plus the rule for a spec sent to the manager: its code travels as a
    bundle (`code.bundle`) or comes from git (`code.git`); a path names the submitter's disk,
    which no other host can read."""
    spec = validate_spec(raw)
    field, reason = "", ""
    if spec.code.path:
        field, reason = "code.path", "a path on the submitter's disk does not reach the builder: `ember job submit` sends the folder as code.bundle; or name code.git"
    elif not (spec.code.bundle or spec.code.git) and spec.probe is None:
        field, reason = "code.bundle", "required: the job's code as a bundle digest (`ember job submit` packs and sends it) or a git source in code.git"
    if field:
        raise InvalidJobSpec(f"invalid job spec: {field}: {reason}", details=[{"field": field, "reason": reason}])
    return spec


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML job file into a dict (not yet validated; the manager validates)."""
    text = Path(path).read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidJobSpec(f"{path}: not valid YAML: {exc}", details=[{"field": "(file)", "reason": str(exc)}]) from None
    if not isinstance(raw, dict):
        raise InvalidJobSpec(f"{path}: a job spec must be a YAML mapping", details=[{"field": "(file)", "reason": "not a mapping"}])
    return raw
