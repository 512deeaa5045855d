"""Flamelet settings: the shared `EMBER_*` ones plus `EMBER_FLAMELET_*` and the mldata folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from ember.events import NODE_NAME_PATTERN, Role
from ember.settings import Settings


class FlameletSettings(Settings):
    """One worker node's agent. `node_id` (`EMBER_NODE_ID` or `--node`) is required."""

    flamelet_capabilities: list[Role] = Field(default_factory=lambda: [Role.AGGREGATOR, Role.LEARNER])
    """Roles this node accepts (`EMBER_FLAMELET_CAPABILITIES=learner` or `aggregator,learner`)."""
    flamelet_cpus: int | None = Field(default=None, ge=1)
    """CPUs announced to the notifier; default: the machine's."""
    flamelet_memory_mb: int | None = Field(default=None, ge=16)
    """Memory announced to the notifier; default: the machine's."""
    flamelet_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Labels announced in the node info (`EMBER_FLAMELET_LABELS=site=plant-a,line=2`, or
    `--label site=plant-a` repeated); job placement and model serving can require them."""
    flamelet_stop_grace: float = Field(default=2.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when an actor is no longer desired."""
    flamelet_leave_actors: bool = False
    """On shutdown, leave the actors running (a restarted flamelet re-adopts them)."""
    flamelet_orphan_grace: float = Field(default=30.0, ge=0)
    """Seconds an actor runs on once no flamelet is alive on its node before it is stopped (a
    flamelet restarted within this time re-adopts it); 0: actors never stop for that."""
    flamelet_desired_wait: float = Field(default=5.0, ge=0)
    """On (re)connect with actors on the node, how long to wait for the node's retained desired
    state (to stop what is no longer desired) before reporting `online` without it."""
    flamelet_log_interval: float = Field(default=0.5, gt=0)
    """How often new actor log lines are batched onto `nodes/{node}/actors/{actor}/log`."""
    flamelet_runtimes: list[str] = Field(default_factory=lambda: ["process", "docker"])
    """Runtimes this node may offer (`EMBER_FLAMELET_RUNTIMES=process`); `docker` only when an engine answers."""
    flamelet_keep_images: int = Field(default=3, ge=0)
    """Actor images kept on the node (most recently used); older ones are removed as jobs end."""
    flamelet_summary_interval: float = Field(default=5.0, gt=0)
    """How often the mldata summary file is checked for new data tags."""
    flamelet_pip_args: str = ""
    """Extra `pip install` arguments for the venvs this node prepares for jobs' requirements
    (`ember.flamelet.code`), e.g. `--no-index --find-links /srv/wheels` on an offline node."""
    mldata_data_dir: Path | None = None
    """The node's mldata folder (`EMBER_MLDATA_DATA_DIR`); its `_summary.json` lists the data tags."""
    mldata_url: str = ""
    """Where learners on this node reach mldata (announced in the node info); default: the URL
    the node's mldata recorded in its folder (`mldata_data_dir`)."""

    @field_validator("node_id")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if value and not re.fullmatch(NODE_NAME_PATTERN, value):
            shown = value[:40] + ("..." if len(value) > 40 else "")
            raise ValueError(f"node name {shown!r} ({len(value)} chars): use 1-63 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("flamelet_capabilities", "flamelet_runtimes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("flamelet_labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            pairs = [str(part).strip() for part in value if str(part).strip()]
            bad = [pair for pair in pairs if "=" not in pair or not pair.split("=", 1)[0].strip()]
            if bad:
                raise ValueError(f"labels are key=value, got {', '.join(bad)}")
            return {key.strip(): val.strip() for key, val in (pair.split("=", 1) for pair in pairs)}
        return value

    @property
    def node_dir(self) -> Path:
        """`$EMBER_HOME/nodes/<node>`: actor logs and bookkeeping of this node."""
        return self.home / "nodes" / self.node_id

    @property
    def actors_dir(self) -> Path:
        return self.node_dir / "actors"
