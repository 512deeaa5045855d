"""The flamelet: one worker node's agent (lifecycle and wiring).

    async with Flamelet(settings) as flamelet:   # adopts, connects, announces, reconciles
        await flamelet.wait_stopped()            # until request_stop() (SIGTERM) or a loop dies

It announces the node (retained `NodeInfo` and `NodeStatus` online, with a retained Last Will
`offline`), re-announces on every (re)connect, applies `nodes/{node}/desired` through the
supervisor and publishes each actor's reports and log lines. On a clean shutdown it stops its
actors (unless `flamelet_leave_actors`), publishes `offline` itself and disconnects.

A node that (re)connects with actors (adopted, or running while it was away) first waits for its
retained desired state (up to `flamelet_desired_wait`) and stops every actor no longer desired
(its node may have been declared lost meanwhile, and those actors re-placed elsewhere); only then
does it say `online` and report its actors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as TallyCounter
from collections.abc import Coroutine, Iterable
from datetime import datetime
from typing import Any

from ember import topics
from ember.bus import Bus, Message
from ember.data.settings import read_url
from ember.datasummary import summary_stamp
from ember.envelope import Envelope, utcnow
from ember.errors import InvalidSettings, Unavailable
from ember.events import ActorLogLines, ActorReport, ActorSpec, NodeStatus
from ember.flamelet.handlers import desired_handler
from ember.flamelet.node import node_info, node_runtimes
from ember.flamelet.runtime import Runtime
from ember.flamelet.settings import FlameletSettings
from ember.flamelet.supervisor import Supervisor
from ember.metrics import Metric, tally_gauge
from ember.service import Service, service_bus


class Flamelet(Service):
    """One node's agent as an `ember.service.Service`; its loops announce the node and watch
    the mldata summary, and the supervisor's actor watchers run in the same task group."""

    name = "flamelet"

    def __init__(self, settings: FlameletSettings, *, runtime: Runtime | None = None) -> None:
        super().__init__(grace=None)  # the supervisor gives each actor `flamelet_stop_grace`, then SIGKILL
        node = settings.node_id
        if not node or any(c in node for c in "/+#\x00"):
            raise InvalidSettings(f"a flamelet needs a node id without '/', '+' or '#' (got {node!r}); pass --node or EMBER_NODE_ID")
        self.settings = settings
        self.node = node
        self.root = settings.topic_root
        self.started: datetime = utcnow()
        self._will_since = self._online_since = self.started
        self.runtime = runtime or node_runtimes(settings)
        self.log = self.log.bind(node=node)
        self.bus = service_bus(settings, f"ember-flamelet-{node}", f"flamelet/{node}", will=self._will(), on_connect=self._on_connect)
        self.supervisor = Supervisor(
            node,
            self.runtime,
            publish_report=self._publish_report,
            publish_log=self._publish_log,
            clear_report=self._clear_report,
            grace=settings.flamelet_stop_grace,
            log_interval=settings.flamelet_log_interval,
        )
        self._desired_seen = asyncio.Event()
        apply_desired = desired_handler(self.supervisor)

        async def on_desired(message: Message) -> None:
            try:
                await apply_desired(message)
            finally:
                self._desired_seen.set()

        self.bus.subscribe(topics.NODE_DESIRED, on_desired, node=node)
        self._announce = asyncio.Event()
        self._ready = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Adopt the actors a previous flamelet left running; connect (waiting for the broker)."""
        await self.supervisor.adopt()
        await self.bus.start(wait=None)

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        self.supervisor.bind(self.group)
        return {"announcer": self._announcer(), "summary": self._watch_summary()}

    async def ready(self) -> None:
        """Until connected and announced."""
        await self._ready.wait()

    async def drain(self) -> None:
        """Stop the actors (each gets `flamelet_stop_grace`), unless `flamelet_leave_actors`."""
        if self.settings.flamelet_leave_actors:
            self.log.info("flamelet.leaving_actors", actors=len(self.supervisor.actors))
        await self.supervisor.shutdown(leave=self.settings.flamelet_leave_actors)

    async def close(self) -> None:
        """Announce `offline` (a clean disconnect sends no Last Will) and disconnect."""
        if self.bus.connected:
            await self._publish_status("offline", timeout=2.0)
        await self.bus.shutdown()

    def metrics(self) -> Iterable[Metric]:
        states = TallyCounter((m.report.state.value,) for m in self.supervisor.actors.values())
        return [tally_gauge("ember_flamelet_actors", "Actors on this node by state", ["state"], states)]

    def started_fields(self) -> dict[str, Any]:
        return {"actors": len(self.supervisor.actors), "runtime": self.runtime.name}

    # --- announcing --------------------------------------------------------------------------
    def _will(self) -> tuple[str, bytes, bool]:
        """The Last Will of the next connection: `offline`, retained.

        A will is composed before its connection exists, so its `since` is the time it was
        composed; the `online` status of that same connection carries the same `since`, so a
        reader that keeps the newest status (`since` compared with `>=`) accepts the will.
        """
        self._will_since = utcnow()
        status = NodeStatus(node=self.node, status="offline", since=self._will_since)
        envelope = status_envelope(self.node, status)
        return topics.NODE_STATUS.format(self.root, node=self.node), envelope.to_bytes(), True

    async def _on_connect(self, bus: Bus) -> None:
        self._online_since = self._will_since  # the will in force for this connection
        bus.will = self._will()  # the next connection's will carries a fresh `since`
        self._desired_seen.clear()  # the retained desired state comes again after this returns
        self.supervisor.hold()
        self._announce.set()

    async def _announcer(self) -> None:
        """On every (re)connect: info, status online, and every actor's latest report."""
        while True:
            await self._announce.wait()
            self._announce.clear()
            try:
                await self._publish_info()
                await self._stop_undesired()
                await self._publish_status("online", since=self._online_since)
                await self.supervisor.release()
                self._ready.set()
            except Unavailable as exc:
                self.log.warning("flamelet.announce_failed", reason=exc.message)

    async def _stop_undesired(self) -> None:
        """With actors on the node: apply the retained desired state and stop what it no longer
        lists, before the node says `online` (nothing to wait for on a node without actors)."""
        if not self.supervisor.running:
            return
        try:
            await asyncio.wait_for(self._desired_seen.wait(), self.settings.flamelet_desired_wait)
        except TimeoutError:
            self.log.warning("flamelet.no_desired_state", waited=self.settings.flamelet_desired_wait, actors=self.supervisor.running)
            return
        await self.supervisor.settle()

    async def _watch_summary(self) -> None:
        """Re-announce the node info when the mldata summary (the node's data tags) changes."""
        stamp = summary_stamp(self.settings.mldata_data_dir)
        while True:
            await asyncio.sleep(self.settings.flamelet_summary_interval)
            current = summary_stamp(self.settings.mldata_data_dir)
            if current != stamp:
                stamp = current
                with contextlib.suppress(Unavailable):
                    await self._publish_info()

    async def _publish_info(self) -> None:
        info = node_info(self.settings, self.started, getattr(self.runtime, "names", [self.runtime.name]))
        if not info.mldata_url:  # the URL the node's mldata recorded: its learners reach it there
            info = info.model_copy(update={"mldata_url": read_url(self.settings.mldata_data_dir)})
        envelope = self.bus.envelope("NodeInfo", info.model_dump(mode="json"), subject=self.node)
        await self.bus.publish(topics.NODE_INFO.format(self.root, node=self.node), envelope, retain=True)

    async def _publish_status(self, status: str, *, since: datetime | None = None, timeout: float = 10.0) -> None:
        value = NodeStatus(node=self.node, status=status, since=since or utcnow())
        envelope = status_envelope(self.node, value, source=self.bus.source)
        try:
            await self.bus.publish(topics.NODE_STATUS.format(self.root, node=self.node), envelope, retain=True, timeout=timeout)
        except Unavailable as exc:
            self.log.warning("flamelet.status_not_published", status=status, reason=exc.message)

    # --- reports -----------------------------------------------------------------------------
    def _state_topic(self, actor: str) -> str:
        return topics.ACTOR_STATE.format(self.root, node=self.node, actor=actor)

    async def _publish_report(self, report: ActorReport) -> None:
        envelope = self.bus.envelope("ActorReport", report.model_dump(mode="json"), subject=report.actor)
        try:
            await self.bus.publish(self._state_topic(report.actor), envelope, retain=True)
        except Unavailable as exc:  # republished on the next connect
            self.log.warning("flamelet.report_not_published", actor=report.actor, state=report.state.value, reason=exc.message)

    async def _clear_report(self, spec: ActorSpec) -> None:
        with contextlib.suppress(Unavailable):
            await self.bus.publish(self._state_topic(spec.actor), b"", retain=True, timeout=2.0)

    async def _publish_log(self, spec: ActorSpec, lines: list[str]) -> None:
        if not lines:
            return
        data = ActorLogLines(actor=spec.actor, job=spec.job, lines=lines).model_dump(mode="json")
        topic = topics.ACTOR_LOG.format(self.root, node=self.node, actor=spec.actor)
        try:
            await self.bus.publish(topic, self.bus.envelope("ActorLogLines", data, subject=spec.actor), timeout=2.0)
        except Unavailable:
            self.bus.stats["log_batches_dropped"] += 1


def status_envelope(node: str, status: NodeStatus, *, source: str = "") -> Envelope:
    return Envelope(type="NodeStatus", source=source or f"flamelet/{node}", subject=node, data=status.model_dump(mode="json"))
