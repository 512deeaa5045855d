"""The notifier: places actors on nodes and publishes each node's desired state (wiring).

    async with Notifier(settings) as notifier:   # rebuilds from the log, connects, reconciles
        await notifier.wait_stopped()            # until stop() (SIGTERM) or a fatal error

A `LogFollower` rebuilds the projection from the whole event log at start and catches up on
every `events/#` message (and every 2 s); node info/status changes wake it too. Each pass
(level-triggered): append what `core.decide` says is owed (placements, re-placements,
`no capacity` / `node lost` failures, all with deterministic ids), then publish the desired
state of every node whose actor set changed (retained). A `kill -9` and restart rebuilds the
same view from the log and the retained node topics and appends nothing twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ember import topics
from ember.bus import Bus
from ember.eventlog import EventLog, open_eventlog
from ember.eventlog.base import StoredEvent
from ember.errors import Unavailable
from ember.events import DesiredState
from ember.follower import LogFollower, append_and_publish
from ember.log import get_logger
from ember.notifier.core import decide
from ember.notifier.desired import ActorEnv, desired_actors
from ember.notifier.handlers import node_handlers
from ember.nodes import NodeTable
from ember.notifier.settings import NotifierSettings
from ember.projection import Projection

CLIENT_ID = "ember-notifier"
PUBLISH_IN_FLIGHT = 100
SOURCE = "notifier"


class Notifier:
    def __init__(self, settings: NotifierSettings, *, eventlog: EventLog | None = None, client_id: str = CLIENT_ID) -> None:
        self.settings = settings
        self.root = settings.topic_root
        self.log = get_logger("ember.notifier")
        self.eventlog = eventlog
        self._own_eventlog = eventlog is None
        self.nodes = NodeTable()
        self.bus = Bus(settings.resolved_mqtt_url(), client_id=client_id, root=self.root, persistent=True,
                       keepalive=settings.keepalive, source=SOURCE)
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
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        on_info, on_status = node_handlers(self.nodes, self._wake)
        self.bus.subscribe(topics.NODE_INFO, on_info)
        self.bus.subscribe(topics.NODE_STATUS, on_status)

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Notifier:
        """Start; return once connected and the log is caught up (raises if it could not start)."""
        self._main = asyncio.get_running_loop().create_task(self.run(), name="notifier")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._main}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._main.done():
            self._main.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Idempotent: stop and wait until stopped."""
        self.stop()
        if self._main is not None:
            await self._main

    async def wait_stopped(self) -> None:
        assert self._main is not None
        await self._main

    async def run(self) -> None:
        if self.eventlog is None:
            self.eventlog = open_eventlog(self.settings.resolved_eventlog_url())
        self.follower = LogFollower(self.eventlog, self.bus, self._reconcile, name="notifier")
        try:
            await self.bus.start(wait=None)
            while not self.bus.connected:
                try:
                    await self.bus.wait_connected(10.0)
                except Unavailable as exc:
                    self.log.warning("notifier.waiting_for_broker", reason=exc.message)
            loop = asyncio.get_running_loop()
            self._place_after = loop.time() + self.settings.notifier_settle
            async with asyncio.TaskGroup() as tg:
                follower = tg.create_task(self.follower.run(), name="follower")
                settle = tg.create_task(self._after_settle(), name="settle")
                self.log.info("notifier.started", settle=self.settings.notifier_settle)
                await self._stop.wait()
                follower.cancel()
                settle.cancel()
        finally:
            await self.bus.shutdown()
            if self._own_eventlog and self.eventlog is not None:
                await self.eventlog.close()
            self.log.info("notifier.stopped")

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
