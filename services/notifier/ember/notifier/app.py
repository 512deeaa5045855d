"""The notifier: places actors on nodes and publishes each node's desired state (wiring).

    async with Notifier(settings) as notifier:   # rebuilds from the log, connects, reconciles
        await notifier.wait_stopped()            # until request_stop() (SIGTERM) or a loop dies

A `LogFollower` rebuilds the projection from the whole event log at start and catches up on
every `events/#` message (and every 2 s); node info/status changes wake it too. Each pass
(level-triggered): append what `core.decide` says is owed (placements, re-placements,
`no capacity` / `node lost` failures, all with deterministic ids), then publish the desired
state of every node whose actor set changed (retained). A `kill -9` and restart rebuilds the
same view from the log and the retained node topics and appends nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from ember import topics
from ember.eventlog import EventLog, open_eventlog
from ember.eventlog.base import StoredEvent
from ember.errors import Unavailable
from ember.events import DesiredState
from ember.follower import LogFollower, append_and_publish
from ember.notifier.core import decide
from ember.notifier.desired import ActorEnv, desired_actors
from ember.notifier.handlers import node_handlers
from ember.nodes import NodeTable
from ember.notifier.settings import NotifierSettings
from ember.projection import Projection
from ember.service import Service, service_bus

PUBLISH_IN_FLIGHT = 100
SOURCE = "notifier"


class Notifier(Service):
    """The notifier as an `ember.service.Service`; its loop is the event-log follower."""

    name = "notifier"

    def __init__(self, settings: NotifierSettings, *, eventlog: EventLog | None = None) -> None:
        super().__init__(grace=None)  # nothing to drain: a reconcile pass is cancelled and redone
        self.settings = settings
        self.root = settings.topic_root
        self.eventlog = eventlog
        self._own_eventlog = eventlog is None
        self.nodes = NodeTable()
        self.bus = service_bus(settings, settings.notifier_client_id, SOURCE)
        self.follower: LogFollower | None = None
        self.published: dict[str, list[dict]] = {}
        """node -> the actor list last published on its desired topic."""
        self.env = ActorEnv(
            mqtt_url=settings.actor_mqtt_url or settings.resolved_mqtt_url(),
            topic_root=self.root,
            mlflow_tracking_uri=settings.resolved_mlflow_uri(),
            home=str(settings.home),
        )
        self.waiting: dict[str, str] = {}
        """job -> why it still waits for capacity (as last logged)."""
        self._place_after = 0.0
        self._ready = asyncio.Event()
        on_info, on_status = node_handlers(self.nodes, self._wake)
        self.bus.subscribe(topics.NODE_INFO, on_info)
        self.bus.subscribe(topics.NODE_STATUS, on_status)

    # --- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, waiting for the broker as long as it takes (a stop request ends the wait)."""
        if self.eventlog is None:
            self.eventlog = open_eventlog(self.settings.resolved_eventlog_url())
        self.follower = LogFollower(self.eventlog, self.bus, self._reconcile, name="notifier")
        await self.bus.start(wait=None)
        while not self.bus.connected:
            try:
                await self.bus.wait_connected(10.0)
            except Unavailable as exc:
                self.log.warning("notifier.waiting_for_broker", reason=exc.message)
        self._place_after = asyncio.get_running_loop().time() + self.settings.notifier_settle

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        assert self.follower is not None
        self.group.create_task(self._after_settle(), name="notifier:settle")
        return {"follower": self.follower.run()}

    async def ready(self) -> None:
        """Until the first reconcile pass is done (the log caught up, desired states published)."""
        await self._ready.wait()

    async def close(self) -> None:
        await self.bus.shutdown()
        if self._own_eventlog and self.eventlog is not None:
            await self.eventlog.close()

    def started_fields(self) -> dict[str, Any]:
        return {"broker": self.bus.url, "settle": self.settings.notifier_settle}

    def stopped_fields(self) -> dict[str, Any]:
        return dict(self.bus.stats)

    async def _after_settle(self) -> None:
        await asyncio.sleep(self.settings.notifier_settle)
        self._wake()

    def _wake(self) -> None:
        if self.follower is not None:
            self.follower.wake()

    # --- one reconcile pass --------------------------------------------------------------------
    async def _reconcile(self, projection: Projection, _new: list[StoredEvent]) -> None:
        if asyncio.get_running_loop().time() >= self._place_after:
            await self._decide(projection)
        await self._publish_desired(projection)
        self._ready.set()

    async def _decide(self, projection: Projection) -> None:
        assert self.eventlog is not None
        outcome = decide(projection, self.nodes, now=datetime.now(UTC), timeout=self.settings.notifier_placement_timeout,
                         overcommit=self.settings.notifier_overcommit)
        for decision in outcome.decisions:
            envelope = decision.event.envelope(decision.job, source=SOURCE, event_id=decision.event_id)
            stored = await append_and_publish(self.eventlog, self.bus, envelope)
            if not stored.duplicate:
                self.log.info("notifier.appended", job=decision.job, type=envelope.type, id=decision.event_id,
                              reason=getattr(decision.event, "reason", ""))
        for job, why in outcome.waiting.items():
            if self.waiting.get(job) != why:
                self.log.info("notifier.waiting_for_capacity", job=job, reason=why,
                              timeout=self.settings.notifier_placement_timeout)
        self.waiting = dict(outcome.waiting)

    async def _publish_desired(self, projection: Projection) -> None:
        """Publish (retained) the desired state of every node whose actor set changed."""
        wanted = desired_actors(projection, self.nodes, self.env)
        changed = []
        for node in sorted(set(wanted) | set(self.published)):
            actors = wanted.get(node, [])
            dumped = [spec.model_dump(mode="json") for spec in actors]
            if self.published.get(node) != dumped:
                changed.append((node, actors, dumped))
        if not changed:
            return
        limit = asyncio.Semaphore(PUBLISH_IN_FLIGHT)  # bounded, not thousands of publishes at once

        async def publish(node: str, actors: list, dumped: list[dict]) -> None:
            state = DesiredState(node=node, revision=projection.last_seq, actors=actors)
            envelope = self.bus.envelope("DesiredState", state.model_dump(mode="json"), subject=node)
            async with limit:
                try:
                    await self.bus.publish(topics.NODE_DESIRED.format(self.root, node=node), envelope, retain=True)
                except Unavailable as exc:  # retried on the next pass
                    self.log.warning("notifier.desired_not_published", node=node, reason=exc.message)
                    return
            self.published[node] = dumped
            self.log.debug("notifier.desired_published", node=node, revision=state.revision, actors=[s.actor for s in actors])

        await asyncio.gather(*(publish(*item) for item in changed))
        self.log.info("notifier.desired_states_published", nodes=len(changed), revision=projection.last_seq)
