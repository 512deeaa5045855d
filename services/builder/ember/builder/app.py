"""Builder lifecycle: event log, bus (persistent session `ember-builder`), follower and worker.

    async with BuilderService(settings) as service:   # following the log once entered
        service.builder.built, service.builder.failed
    # on exit: the running build gets `builder_grace` s, then its pip is killed

`serve(settings)` runs it until SIGTERM/SIGINT (`python -m ember.builder`, `ember builder run`).
The builder has no topic of its own: it reacts to the event log (woken by `events/#` through its
`LogFollower`), so there is no handlers module.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from ember.builder.artifacts import remove_staging
from ember.builder.core import Builder
from ember.builder.settings import BuilderSettings
from ember.bus import Bus
from ember.eventlog import EventLog, open_eventlog
from ember.log import get_logger

log = get_logger("ember.builder")


class BuilderService:
    """The builder as an async context manager; `shutdown()` is idempotent."""

    def __init__(self, settings: BuilderSettings) -> None:
        self.settings = settings
        self.fatal: BaseException | None = None
        self.eventlog: EventLog | None = None
        self.bus: Bus | None = None
        self.builder: Builder | None = None
        self._loops: asyncio.Task[None] | None = None
        self._children: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._closed = False

    async def __aenter__(self) -> BuilderService:
        settings = self.settings
        try:
            removed = remove_staging(settings.artifacts_dir())
            if removed:
                log.info("builder.removed_staging", folders=removed)
            self.eventlog = open_eventlog(settings.resolved_eventlog_url())
            self.bus = Bus(
                settings.resolved_mqtt_url(),
                client_id=settings.builder_client_id,
                root=settings.topic_root,
                persistent=True,
                keepalive=settings.keepalive,
                source="builder",
            )
            self.builder = Builder(self.eventlog, self.bus, settings)
            await self.builder.follower.catch_up()
            await self.bus.start()
            self._loops = asyncio.get_running_loop().create_task(self._run(), name="builder:loops")
            self._loops.add_done_callback(self._loops_done)
        except BaseException:
            await self.shutdown()
            raise
        log.info("builder.started", artifacts=str(settings.artifacts_dir()), broker=self.bus.url, seq=self.builder.projection.last_seq)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def _run(self) -> None:
        assert self.builder is not None
        async with asyncio.TaskGroup() as group:
            self._children.append(group.create_task(self.builder.follower.run(), name="builder:follower"))
            self._children.append(group.create_task(self.builder.worker(), name="builder:worker"))

    async def _stop_loops(self) -> None:
        """Cancel the loops until they are done. Python 3.11's `asyncio.wait_for` can swallow a
        cancellation that lands as its inner await completes, so one `cancel()` is not enough."""
        while self._loops is not None and not self._loops.done():
            for task in (*self._children, self._loops):
                if not task.done():
                    task.cancel()
            await asyncio.wait({self._loops}, timeout=0.5)
        if self._loops is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loops

    def _loops_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        self.fatal = task.exception() or RuntimeError("the builder's loops ended")
        log.error("builder.loop_died", error=repr(self.fatal))
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Give a running build `builder_grace` s, then kill it; stop the loops; disconnect."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        builder = self.builder
        if builder is not None and builder.current is not None:
            job_id, run = builder.current
            deadline = asyncio.get_running_loop().time() + self.settings.builder_grace
            while builder.current is not None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if builder.current is not None:
                log.warning("builder.build_killed", job=job_id, grace=self.settings.builder_grace)
                run.cancel()
        await self._stop_loops()
        if self.bus is not None:
            await self.bus.shutdown()
        if self.eventlog is not None:
            await self.eventlog.close()
        log.info("builder.stopped", built=builder.built if builder else 0, failed=builder.failed if builder else 0)


async def serve(settings: BuilderSettings) -> None:
    """Run the builder until SIGTERM or SIGINT; re-raises a loop's fatal error after shutdown."""
    service = BuilderService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before starting: a SIGTERM during start-up stops cleanly
        loop.add_signal_handler(sig, service.request_stop)
    async with service:
        await service.wait_stopped()
    if service.fatal is not None:
        raise service.fatal
