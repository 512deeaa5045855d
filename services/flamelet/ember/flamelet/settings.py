"""Flamelet settings: the shared `EMBER_*` ones plus `EMBER_FLAMELET_*` and the mldata folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ember.events import Role
from ember.settings import Settings


class FlameletSettings(Settings):
    """One worker node's agent. `node_id` (`EMBER_NODE_ID` or `--node`) is required."""

    flamelet_capabilities: list[Role] = Field(default_factory=lambda: [Role.AGGREGATOR, Role.LEARNER])
    """Roles this node accepts (`EMBER_FLAMELET_CAPABILITIES=learner` or `aggregator,learner`)."""
    flamelet_cpus: int | None = Field(default=None, ge=1)
    """CPUs announced to the notifier; default: the machine's."""
    flamelet_memory_mb: int | None = Field(default=None, ge=16)
    """Memory announced to the notifier; default: the machine's."""
    flamelet_stop_grace: float = Field(default=2.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when an actor is no longer desired."""
    flamelet_leave_actors: bool = False
    """On shutdown, leave the actors running (a restarted flamelet re-adopts them)."""
    flamelet_log_interval: float = Field(default=0.5, gt=0)
    """How often new actor log lines are batched onto `nodes/{node}/actors/{actor}/log`."""
    flamelet_summary_interval: float = Field(default=5.0, gt=0)
    """How often the mldata summary file is checked for new data tags."""
    flamelet_pip_args: str = ""
    """Extra `pip install` arguments for the venvs this node prepares for jobs' requirements
    (`ember.flamelet.code`), e.g. `--no-index --find-links /srv/wheels` on an offline node."""
    mldata_data_dir: Path | None = None
    """The node's mldata folder (`EMBER_MLDATA_DATA_DIR`); its `_summary.json` lists the data tags."""
    mldata_url: str = ""
    """Where learners on this node reach mldata (announced in the node info)."""

    @field_validator("flamelet_capabilities", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def node_dir(self) -> Path:
        """`$EMBER_HOME/nodes/<node>`: actor logs and bookkeeping of this node."""
        return self.home / "nodes" / self.node_id

    @property
    def actors_dir(self) -> Path:
        return self.node_dir / "actors"
