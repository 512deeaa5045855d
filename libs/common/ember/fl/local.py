"""Aggregator and learners of one job in this process, over a given broker.

For tests, examples and benchmarks: the same code paths as the actor processes (MqttGrid,
LearnerEndpoint, Flower strategies, the ClientApp wrapper), without a control plane::

    result = await run_local(spec, [table_a, table_b, table_c], mqtt_url=broker.url)
    result.ok, result.metrics, result.rounds
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ember.bus import Bus
from ember.fl.orchestrator import Orchestrator, TrainingResult
from ember.fl.clientapp import prepare_client
from ember.fl.grid import node_id_for
from ember.fl.endpoint import SESSION_EXPIRY, learner_bus
from ember.jobspec import JobSpec, validate_spec
from ember.log import get_logger

log = get_logger("ember.fl.local")


async def run_local(
    spec: JobSpec | dict[str, Any],
    tables: Sequence[pa.Table | None],
    *,
    mqtt_url: str,
    job: str | None = None,
    root: str = "ember/v1",
    code_dir: str | Path | None = None,
    tracking_uri: str | None = None,
) -> TrainingResult:
    """Run one job: one learner per entry of `tables` (None for Flower apps, which load their own)."""
    spec = spec if isinstance(spec, JobSpec) else validate_spec(spec)
    job = job or f"{spec.name}-{uuid.uuid4().hex[:8]}"
    learners = [f"{job}-learner-{index}" for index in range(len(tables))]
    actor = f"{job}-aggregator"
    bus = Bus(mqtt_url, client_id=actor, root=root, source=actor, persistent=True, session_expiry=SESSION_EXPIRY)
    aggregator = Orchestrator(bus, spec, job=job, actor=actor, learners=learners, code_dir=code_dir, tracking_uri=tracking_uri)
    async with bus, asyncio.TaskGroup() as tg:
        for index, table in enumerate(tables):
            tg.create_task(_learner(spec, job, learners, index, table, mqtt_url=mqtt_url, root=root, code_dir=code_dir, run_id=aggregator.grid.run.run_id))
        return await aggregator.run()


async def _learner(
    spec: JobSpec,
    job: str,
    learners: list[str],
    index: int,
    table: pa.Table | None,
    *,
    mqtt_url: str,
    root: str,
    code_dir: str | Path | None,
    run_id: int,
) -> None:
    actor = learners[index]

    def prepare() -> Any:
        def load() -> pa.Table:
            if table is None:
                raise ValueError(f"no table given for learner {index}")
            return table

        return prepare_client(
            spec, load_table=load, run_id=run_id, node_id=node_id_for(actor), index=index, count=len(learners), node=actor, code_dir=code_dir
        )

    bus, endpoint = learner_bus(mqtt_url, root=root, job=job, actor=actor)
    async with bus:
        try:
            await endpoint.run(prepare)
        except Exception:  # reported to the aggregator as `gone`; the job decides
            log.warning("local.learner_failed", job=job, actor=actor)
