"""Manager lifecycle: event log, bus (persistent session `ember-manager`), follower, wired.

    async with ManagerService(settings) as service:   # serving once entered
        service.manager.projection, service.bus.stats
    # on exit: refuse new requests, let in-flight ones finish (grace), stop the loops

`serve(settings)` runs it until SIGTERM/SIGINT (what `python -m ember.manager` and
`ember manager run` call). At start the projection is rebuilt from the whole log *before* the
bus delivers anything, so a restarted manager judges re-delivered (retained or queued) reports
against everything that happened before it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from ember.bus import Bus
from ember.eventlog import EventLog, open_eventlog
from ember.log import get_logger
from ember.manager.core import Manager
from ember.manager.handlers import Gate, register
from ember.manager.settings import ManagerSettings

log = get_logger("ember.manager")


class ManagerService:
    """The manager as an async context manager; `shutdown()` is idempotent."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.gate = Gate()
        self.fatal: BaseException | None = None
        self.eventlog: EventLog | None = None
        self.bus: Bus | None = None
        self.manager: Manager | None = None
        self._loops: asyncio.Task[None] | None = None
        self._children: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._closed = False

    async def __aenter__(self) -> ManagerService:
        settings = self.settings
        try:
            self.eventlog = open_eventlog(settings.resolved_eventlog_url())
            self.bus = Bus(
                settings.resolved_mqtt_url(),
                client_id=settings.manager_client_id,
                root=settings.topic_root,
                persistent=True,
                keepalive=settings.keepalive,
                source="manager",
            )
            self.manager = Manager(self.eventlog, self.bus, tail_lines=settings.manager_log_tail_lines, resync=settings.manager_resync)
            register(self.bus, self.manager, self.gate)
            await self.manager.catch_up()
            await self.bus.start()
            self._loops = asyncio.get_running_loop().create_task(self._run(), name="manager:loops")
            self._loops.add_done_callback(self._loops_done)
        except BaseException:
            await self.shutdown()
            raise
        log.info(
            "manager.started",
            broker=self.bus.url,
            eventlog=settings.resolved_eventlog_url(),
            jobs=len(self.manager.projection.jobs),
            seq=self.manager.projection.last_seq,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def _run(self) -> None:
        assert self.manager is not None
        async with asyncio.TaskGroup() as group:
            self._children.append(group.create_task(self.manager.follower.run(), name="manager:follower"))

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
        self.fatal = task.exception() or RuntimeError("the manager's loops ended")
        log.error("manager.loop_died", error=repr(self.fatal))
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Refuse new requests, give in-flight ones `manager_grace` s, cancel loops, disconnect."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.gate.open = False
        try:
            await asyncio.wait_for(self.gate.idle.wait(), self.settings.manager_grace)
        except TimeoutError:
            log.warning("manager.grace_expired", in_flight=self.gate.in_flight)
        await self._stop_loops()
        if self.bus is not None:
            await self.bus.shutdown()
        if self.eventlog is not None:
            await self.eventlog.close()
        log.info("manager.stopped", **(dict(self.bus.stats) if self.bus else {}))


async def serve(settings: ManagerSettings) -> None:
    """Run the manager until SIGTERM or SIGINT; re-raises a loop's fatal error after shutdown."""
    service = ManagerService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before starting: a SIGTERM during start-up stops cleanly
        loop.add_signal_handler(sig, service.request_stop)
    async with service:
        await service.wait_stopped()
    if service.fatal is not None:
        raise service.fatal
