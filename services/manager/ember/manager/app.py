"""Manager lifecycle: event log, bus (persistent session `ember-manager`), follower, wired.

    async with ManagerService(settings) as service:   # serving once entered
        service.manager.projection, service.bus.stats
    # on exit: refuse new requests, let in-flight ones finish (grace), stop the loops

`python -m ember.manager` and `ember manager run` run it through `ember.service.run_main`. At
start the projection is rebuilt from the whole log *before* the bus delivers anything, so a
restarted manager judges re-delivered (retained or queued) reports against everything that
happened before it died.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any

from ember.bus import Bus
from ember.eventlog import EventLog, open_eventlog
from ember.manager.core import Manager
from ember.manager.handlers import Gate, register
from ember.manager.settings import ManagerSettings
from ember.metrics import Metric, RoundObserver, projection_metrics
from ember.service import Service, service_bus


class ManagerService(Service):
    """The manager as an `ember.service.Service`; its loop is the event-log follower."""

    name = "manager"

    def __init__(self, settings: ManagerSettings) -> None:
        super().__init__(grace=settings.manager_grace)
        self.settings = settings
        self.gate = Gate()
        self.eventlog: EventLog | None = None
        self.bus: Bus | None = None
        self.manager: Manager | None = None
        self.rounds = RoundObserver()

    async def open(self) -> None:
        settings = self.settings
        self.eventlog = open_eventlog(settings.resolved_eventlog_url())
        self.bus = service_bus(settings, settings.manager_client_id, "manager")
        self.manager = Manager(self.eventlog, self.bus, tail_lines=settings.manager_log_tail_lines, resync=settings.manager_resync)
        register(self.bus, self.manager, self.gate)
        await self.manager.catch_up()
        await self.bus.start()

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        assert self.manager is not None
        return {"follower": self.manager.follower.run()}

    async def drain(self) -> None:
        """Refuse new requests; the in-flight ones finish (within `manager_grace`)."""
        self.gate.open = False
        await self.gate.idle.wait()

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.shutdown()
        if self.eventlog is not None:
            await self.eventlog.close()

    def started_fields(self) -> dict[str, Any]:
        assert self.bus is not None and self.manager is not None
        projection = self.manager.projection
        return {"broker": self.bus.url, "eventlog": self.settings.resolved_eventlog_url(), "jobs": len(projection.jobs), "seq": projection.last_seq}

    def metrics(self) -> Iterable[Metric]:
        return projection_metrics(self.manager.projection, self.rounds) if self.manager is not None else ()

    def stopped_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = dict(self.bus.stats) if self.bus else {}
        if self.gate.in_flight:
            fields["in_flight"] = self.gate.in_flight
        return fields
