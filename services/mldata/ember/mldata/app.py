"""mldata lifecycle: the partition store, the Flight server and MQTT ingestion, wired.

    async with MldataService(settings) as service:   # serving once entered
        service.url, service.port, service.ingestor.stats()
    # on exit: stop consuming MQTT, flush every buffer, let in-flight Flight calls finish

`python -m ember.mldata` and `ember mldata run` run it through `ember.service.run_main`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

import pyarrow as pa

from ember import topics
from ember.bus import Bus
from ember.errors import Unavailable
from ember.mldata.handlers import data_handler
from ember.mldata.ingest import Batch, Ingestor
from ember.mldata.server import MldataFlightServer
from ember.mldata.settings import MldataSettings
from ember.mldata.store import PartitionStore
from ember.mldata.summary import write_summary
from ember.metrics import Metric, counters
from ember.service import Service, service_bus


class MldataService(Service):
    """One node's mldata as an `ember.service.Service`; with ingestion on, its loops flush the
    ingestion buffers into partitions."""

    name = "mldata"

    def __init__(self, settings: MldataSettings, *, grace: float = 30.0) -> None:
        super().__init__(grace=grace)
        self.settings = settings
        self.node = settings.node()
        self.store = PartitionStore(
            settings.data_dir(),
            compression=settings.mldata_compression,
            serving_copies=settings.mldata_serving_copies,
            on_change=self._write_summary,
        )
        self.ingestor = Ingestor(
            self.store, flush_rows=settings.mldata_flush_rows, flush_seconds=settings.mldata_flush_seconds, node=self.node
        )
        self.server: MldataFlightServer | None = None
        self.bus: Bus | None = None
        self._flushes: asyncio.Queue[Batch] = asyncio.Queue(maxsize=4)

    def _write_summary(self, store: PartitionStore) -> None:
        write_summary(store, self.node)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def open(self) -> None:
        settings = self.settings
        self.store.open()
        write_summary(self.store, self.node)
        location = f"grpc://{settings.mldata_host}:{settings.mldata_port}"
        try:
            self.server = MldataFlightServer(
                self.store,
                location=location,
                token=settings.token(create=True),
                batch_size=settings.mldata_batch_rows,
                stats=self.ingestor.stats,
            )
        except (OSError, pa.ArrowException) as exc:
            raise Unavailable(f"cannot serve Arrow Flight on {location}: {exc}") from None
        if settings.mldata_ingest:
            self.bus = service_bus(settings, f"ember-mldata-{self.node}", f"mldata/{self.node}")
            self.bus.subscribe(topics.DATA, data_handler(self.ingestor, self._flushes), raw=True)
            await self.bus.start(wait=None)  # Flight serves while the broker is away

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        if not self.settings.mldata_ingest:
            return {}
        return {"flusher": self._flusher(), "ticker": self._ticker()}

    async def drain(self) -> None:
        """Stop consuming MQTT, then flush every buffer into a partition (within `grace`)."""
        if self.bus is not None:
            await self.bus.shutdown()
            await self.flush()

    def abandon(self) -> None:
        if self.ingestor.buffered or self._flushes.qsize():
            self.log.error("mldata.readings_not_flushed", grace=self.grace, buffered=self.ingestor.buffered, batches=self._flushes.qsize())

    async def close(self) -> None:
        """Disconnect, let in-flight Flight calls finish, write the summary, release the dir."""
        if self.bus is not None:
            await self.bus.shutdown()
        if self.server is not None:
            await asyncio.to_thread(self.server.shutdown)
        if self.store.is_open:
            write_summary(self.store, self.node)
            self.store.close()

    def metrics(self) -> Iterable[Metric]:
        parts = self.store.partitions()
        stored = {"rows": sum(p.rows for p in parts), "bytes": sum(p.bytes for p in parts)}
        stored_metrics = counters("ember_mldata_stored", "Rows and bytes held in this node's partitions", stored, gauges=("rows", "bytes"))
        return stored_metrics + counters("ember_mldata_ingest", "MQTT readings ingestion", self.ingestor.stats(), gauges=("buffered",))

    def started_fields(self) -> dict[str, Any]:
        return {"node": self.node, "port": self.port, "data_dir": str(self.store.root), "ingest": self.settings.mldata_ingest}

    def stopped_fields(self) -> dict[str, Any]:
        return {"node": self.node, **self.ingestor.stats()}

    async def wait_ingesting(self, timeout: float = 10.0) -> None:
        """Until the MQTT subscription is live (tests, `ember up`)."""
        assert self.bus is not None, "ingestion is disabled"
        await self.bus.wait_connected(timeout)

    async def flush(self) -> None:
        """Flush every buffer now and wait until they are partitions."""
        for batch in self.ingestor.take_all():
            await self._flushes.put(batch)
        await self._flushes.join()

    # Loops --------------------------------------------------------------------------------
    async def _flusher(self) -> None:
        while True:
            batch = await self._flushes.get()
            try:
                await asyncio.to_thread(self.ingestor.flush, batch)
            finally:
                self._flushes.task_done()

    async def _ticker(self) -> None:
        period = min(1.0, self.settings.mldata_flush_seconds / 2)
        while True:
            await asyncio.sleep(period)
            for batch in self.ingestor.due():
                await self._flushes.put(batch)

