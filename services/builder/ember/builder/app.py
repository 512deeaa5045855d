"""Builder lifecycle: event log, bus (persistent session `ember-builder`), follower and worker.

    async with BuilderService(settings) as service:   # following the log once entered
        service.builder.built, service.builder.failed
    # on exit: the running build gets `builder_grace` s, then its pip is killed

`python -m ember.builder` and `ember builder run` run it through `ember.service.run_main`. The
builder has no topic of its own: it reacts to the event log (woken by `events/#` through its
`LogFollower`), so there is no handlers module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

from ember.builder.artifacts import remove_staging
from ember.builder.core import Builder
from ember.builder.settings import BuilderSettings
from ember.bus import Bus
from ember.eventlog import EventLog, open_eventlog
from ember.metrics import Metric, counters
from ember.service import Service, service_bus


class BuilderService(Service):
    """The builder as an `ember.service.Service`; its loops are the follower and the worker."""

    name = "builder"

    def __init__(self, settings: BuilderSettings) -> None:
        super().__init__(grace=settings.builder_grace)
        self.settings = settings
        self.eventlog: EventLog | None = None
        self.bus: Bus | None = None
        self.builder: Builder | None = None

    async def open(self) -> None:
        settings = self.settings
        removed = remove_staging(settings.artifacts_dir())
        if removed:
            self.log.info("builder.removed_staging", folders=removed)
        self.eventlog = open_eventlog(settings.resolved_eventlog_url())
        self.bus = service_bus(settings, settings.builder_client_id, "builder")
        self.builder = Builder(self.eventlog, self.bus, settings)
        await self.builder.follower.catch_up()
        await self.bus.start()

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        assert self.builder is not None
        return {"follower": self.builder.follower.run(), "worker": self.builder.worker()}

    async def drain(self) -> None:
        """Let the running build finish (within `builder_grace`)."""
        while self.builder is not None and self.builder.current is not None:  # noqa: ASYNC110 (a build signals no end)
            await asyncio.sleep(0.05)

    def abandon(self) -> None:
        """Kill the running build's pip (the job is built again after a restart)."""
        if self.builder is not None and self.builder.current is not None:
            job_id, run = self.builder.current
            self.log.warning("builder.build_killed", job=job_id, grace=self.grace)
            run.cancel()

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.shutdown()
        if self.eventlog is not None:
            await self.eventlog.close()

    def metrics(self) -> Iterable[Metric]:
        if self.builder is None:
            return ()
        return counters("ember_builds", "Job artifact builds", {"succeeded": self.builder.built, "failed": self.builder.failed})

    def started_fields(self) -> dict[str, Any]:
        assert self.bus is not None and self.builder is not None
        return {"artifacts": str(self.settings.artifacts_dir()), "broker": self.bus.url, "seq": self.builder.projection.last_seq}

    def stopped_fields(self) -> dict[str, Any]:
        builder = self.builder
        return {"built": builder.built if builder else 0, "failed": builder.failed if builder else 0}
