"""mldata lifecycle: the partition store, the Flight server and MQTT ingestion, wired.

    async with MldataService(settings) as service:   # serving once entered
        service.url, service.port, service.ingestor.stats()
    # on exit: stop consuming MQTT, flush every buffer, let in-flight Flight calls finish

`serve(settings)` runs it until SIGTERM/SIGINT (what `python -m ember.mldata` and
`ember mldata run` call).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import pyarrow as pa

from ember import topics
from ember.bus import Bus
from ember.errors import Unavailable
from ember.log import get_logger
from ember.mldata.handlers import data_handler
from ember.mldata.ingest import Batch, Ingestor
from ember.mldata.server import MldataFlightServer
from ember.mldata.settings import MldataSettings
from ember.mldata.store import PartitionStore
from ember.mldata.summary import write_summary

log = get_logger("ember.mldata")


class MldataService:
    """One node's mldata as an async context manager; `shutdown()` is idempotent."""

    def __init__(self, settings: MldataSettings, *, grace: float = 30.0) -> None:
        self.settings = settings
        self.node = settings.node()
        self.grace = grace
        self.store = PartitionStore(
            settings.data_dir(),
            compression=settings.mldata_compression,
            serving_copies=settings.mldata_serving_copies,
            on_change=lambda store: write_summary(store, self.node),
        )
        self.ingestor = Ingestor(
            self.store, flush_rows=settings.mldata_flush_rows, flush_seconds=settings.mldata_flush_seconds, node=self.node
        )
        self.server: MldataFlightServer | None = None
        self.bus: Bus | None = None
        self.fatal: BaseException | None = None
        self._flushes: asyncio.Queue[Batch] = asyncio.Queue(maxsize=4)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._closed = False

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def __aenter__(self) -> MldataService:
        settings = self.settings
        self.store.open()
        try:
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
                self._start_loop(self._flusher(), "flusher")
                self._start_loop(self._ticker(), "ticker")
                self.bus = Bus(
                    settings.resolved_mqtt_url(),
                    client_id=f"ember-mldata-{self.node}",
                    root=settings.topic_root,
                    persistent=True,
                    keepalive=settings.keepalive,
                    source=f"mldata/{self.node}",
                )
                self.bus.subscribe(topics.DATA, data_handler(self.ingestor, self._flushes), raw=True)
                await self.bus.start(wait=None)  # Flight serves while the broker is away
        except BaseException:
            await self.shutdown()
            raise
        log.info("mldata_started", node=self.node, port=self.port, data_dir=str(self.store.root), ingest=settings.mldata_ingest)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def wait_ingesting(self, timeout: float = 10.0) -> None:
        """Until the MQTT subscription is live (tests, `ember up`)."""
        assert self.bus is not None, "ingestion is disabled"
        await self.bus.wait_connected(timeout)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def flush(self) -> None:
        """Flush every buffer now and wait until they are partitions."""
        for batch in self.ingestor.take_all():
            await self._flushes.put(batch)
        await self._flushes.join()

    async def shutdown(self) -> None:
        """Stop consuming, flush buffers (within `grace`), finish Flight calls, release the dir."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.bus is not None:
            await self.bus.shutdown()
        if self._tasks and not self.fatal:
            try:
                await asyncio.wait_for(self.flush(), self.grace)
            except TimeoutError:
                log.error("flush_timeout", grace=self.grace, buffered=self.ingestor.buffered)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            await asyncio.to_thread(self.server.shutdown)
        if self.store.is_open:
            write_summary(self.store, self.node)
        self.store.close()
        log.info("mldata_stopped", node=self.node, **self.ingestor.stats())

    # Loops --------------------------------------------------------------------------------
    def _start_loop(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"mldata:{name}")
        task.add_done_callback(self._loop_done)
        self._tasks.append(task)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        self.fatal = task.exception() or RuntimeError(f"{task.get_name()} ended")
        log.error("loop_died", loop=task.get_name(), error=repr(self.fatal))
        self._stop.set()

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


async def serve(settings: MldataSettings) -> None:
    """Run mldata until SIGTERM or SIGINT; re-raises a loop's fatal error after shutdown."""
    async with MldataService(settings) as service:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        await service.wait_stopped()
    if service.fatal is not None:
        raise service.fatal
