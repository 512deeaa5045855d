"""What a flamelet announces about its node: `NodeInfo` (machine, roles, runtimes, data tags)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ember.datasummary import DataSummary
from ember.events import NodeInfo
from ember.flamelet.process import ProcessRuntime
from ember.flamelet.runtime import Runtime, Runtimes
from ember.flamelet.settings import FlameletSettings


def memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def node_runtimes(settings: FlameletSettings) -> Runtimes:
    """The runtimes of `flamelet_runtimes` this node can run: `docker` only when its engine answers."""
    runtimes: list[Runtime] = []
    if "process" in settings.flamelet_runtimes:
        runtimes.append(ProcessRuntime(settings.actors_dir, orphan_grace=settings.flamelet_orphan_grace))
    if "docker" in settings.flamelet_runtimes:
        from ember.flamelet.containers import DockerRuntime  # needs the docker package and an engine

        docker = DockerRuntime.connect(settings.actors_dir, node=settings.node_id, mldata_dir=settings.mldata_data_dir,
                                       keep_images=settings.flamelet_keep_images)
        if docker is not None:
            runtimes.append(docker)
    return Runtimes(*runtimes)


def node_info(settings: FlameletSettings, started: datetime, runtimes: list[str] | None = None) -> NodeInfo:
    """The node's info; its data tags come from the summary file of the node's mldata."""
    return NodeInfo(
        node=settings.node_id,
        cpus=settings.flamelet_cpus or os.cpu_count() or 1,
        memory_mb=settings.flamelet_memory_mb or memory_mb(),
        capabilities=list(settings.flamelet_capabilities),
        runtimes=runtimes if runtimes is not None else ["process"],
        data=DataSummary.read(settings.mldata_data_dir).rows(),
        mldata_url=settings.mldata_url,
        labels=dict(settings.flamelet_labels),
        started=started,
    )
