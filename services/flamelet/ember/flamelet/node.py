"""What a flamelet has and announces about its node: runtimes, `NodeInfo` (machine, roles, data tags)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from ember.events import NodeInfo
from ember.flamelet.process import ProcessRuntime
from ember.flamelet.runtime import Runtime, Runtimes
from ember.flamelet.settings import FlameletSettings

SUMMARY_FILE = "_summary.json"
"""Written by the node's mldata (see `ember.mldata.summary`): `{"v": 1, "tags": {tag: {"rows": n}}}`."""


def memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def data_tags(data_dir: Path | None) -> dict[str, int]:
    """Data tags held by the node's mldata and their row counts; {} without a readable summary."""
    if data_dir is None:
        return {}
    try:
        doc = json.loads((data_dir / SUMMARY_FILE).read_text())
        return {str(tag): int(entry.get("rows", 0)) for tag, entry in doc["tags"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def summary_stamp(data_dir: Path | None) -> float | None:
    """Modification time of the summary file (None when absent): a change means new tags."""
    try:
        return (data_dir / SUMMARY_FILE).stat().st_mtime if data_dir else None
    except OSError:
        return None


def node_runtimes(settings: FlameletSettings) -> Runtimes:
    """The runtimes of `flamelet_runtimes` this node can run: `docker` only when its engine answers."""
    runtimes: list[Runtime] = []
    if "process" in settings.flamelet_runtimes:
        runtimes.append(ProcessRuntime(settings.actors_dir))
    if "docker" in settings.flamelet_runtimes:
        from ember.flamelet.containers import DockerRuntime  # needs the docker package and an engine

        docker = DockerRuntime.connect(settings.actors_dir, node=settings.node_id, mldata_dir=settings.mldata_data_dir,
                                       keep_images=settings.flamelet_keep_images)
        if docker is not None:
            runtimes.append(docker)
    return Runtimes(*runtimes)


def node_info(settings: FlameletSettings, started: datetime, runtimes: list[str] | None = None) -> NodeInfo:
    return NodeInfo(
        node=settings.node_id,
        cpus=settings.flamelet_cpus or os.cpu_count() or 1,
        memory_mb=settings.flamelet_memory_mb or memory_mb(),
        capabilities=list(settings.flamelet_capabilities),
        runtimes=runtimes if runtimes is not None else ["process"],
        data=data_tags(settings.mldata_data_dir),
        mldata_url=settings.mldata_url,
        started=started,
    )
