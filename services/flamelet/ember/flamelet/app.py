"""The flamelet: one worker node's agent (lifecycle and wiring).

    async with Flamelet(settings) as flamelet:   # adopts, connects, announces, reconciles
        await flamelet.wait_stopped()            # until stop() (SIGTERM) or a fatal error

It announces the node (retained `NodeInfo` and `NodeStatus` online, with a retained Last Will
`offline`), re-announces on every (re)connect, applies `nodes/{node}/desired` through the
supervisor and publishes each actor's reports and log lines. On a clean shutdown it stops its
actors (unless `flamelet_leave_actors`), publishes `offline` itself and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from ember import topics
from ember.bus import Bus
from ember.envelope import Envelope, utcnow
from ember.errors import Unavailable
from ember.events import ActorLogLines, ActorReport, ActorSpec, NodeStatus
from ember.flamelet.handlers import desired_handler
from ember.flamelet.node import node_info, node_runtimes, summary_stamp
from ember.flamelet.runtime import Runtime
from ember.flamelet.settings import FlameletSettings
from ember.flamelet.supervisor import Supervisor
from ember.log import get_logger


class Flamelet:
    def __init__(self, settings: FlameletSettings, *, runtime: Runtime | None = None) -> None:
        node = settings.node_id
        if not node or any(c in node for c in "/+#\x00"):
            raise ValueError(f"a flamelet needs a node id without '/', '+' or '#' (got {node!r}); pass --node or EMBER_NODE_ID")
        self.settings = settings
        self.node = node
        self.root = settings.topic_root
        self.started: datetime = utcnow()
        self._will_since = self._online_since = self.started
        self.runtime = runtime or node_runtimes(settings)
        self.log = get_logger("ember.flamelet", node=node)
        self.bus = Bus(
            settings.resolved_mqtt_url(),
            client_id=f"ember-flamelet-{node}",
            root=self.root,
            persistent=True,
            keepalive=settings.keepalive,
            will=self._will(),
            source=f"flamelet/{node}",
            on_connect=self._on_connect,
        )
        self.supervisor = Supervisor(
            node,
            self.runtime,
            publish_report=self._publish_report,
            publish_log=self._publish_log,
            clear_report=self._clear_report,
            grace=settings.flamelet_stop_grace,
            log_interval=settings.flamelet_log_interval,
        )
        self.bus.subscribe(topics.NODE_DESIRED, desired_handler(self.supervisor), node=node)
        self._announce = asyncio.Event()
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Flamelet:
        """Start, and return once connected and announced (raises if it could not start)."""
        self._main = asyncio.get_running_loop().create_task(self.run(), name=f"flamelet:{self.node}")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._main}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._main.done():
            self._main.result()  # re-raise why it could not start
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def stop(self) -> None:
        """Ask for a clean shutdown (safe from a signal handler)."""
        self._stop.set()

    async def shutdown(self) -> None:
        """Idempotent: stop and wait until the flamelet has shut down."""
        self.stop()
        if self._main is not None:
            await self._main

    async def wait_stopped(self) -> None:
        assert self._main is not None
        await self._main

    async def run(self) -> None:
        """Adopt, connect, serve until stopped; then stop actors, announce offline, disconnect."""
        await self.supervisor.adopt()
        await self.bus.start(wait=None)
        try:
            async with asyncio.TaskGroup() as tg:
                self.supervisor.bind(tg)
                loops = [
                    tg.create_task(self._announcer(), name="announcer"),
                    tg.create_task(self._watch_summary(), name="summary"),
                ]
                self.log.info("flamelet.started", actors=len(self.supervisor.actors), runtime=self.runtime.name)
                await self._stop.wait()
                self.log.info("flamelet.stopping", leave_actors=self.settings.flamelet_leave_actors)
                await self.supervisor.shutdown(leave=self.settings.flamelet_leave_actors)
                for task in loops:
                    task.cancel()
                await self._publish_status("offline", timeout=2.0)
        finally:
            await self.bus.shutdown()
            self.log.info("flamelet.stopped")

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
        self._announce.set()

    async def _announcer(self) -> None:
        """On every (re)connect: info, status online, and every actor's latest report."""
        while True:
            await self._announce.wait()
            self._announce.clear()
            try:
                await self._publish_info()
                await self._publish_status("online", since=self._online_since)
                await self.supervisor.republish()
                self._ready.set()
            except Unavailable as exc:
                self.log.warning("flamelet.announce_failed", reason=exc.message)

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
