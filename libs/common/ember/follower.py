"""Follow the event log: rebuild a projection, then keep it current.

A control-plane service that reacts to events (builder, notifier, manager) uses a
`LogFollower`: at start it folds the whole log into its `Projection` (so a restart rebuilds
state and catches up), then every message on `events/{aggregate}/{type}` of a (non-quiet)
event type wakes it to read the log after the last applied seq. The log, not the MQTT
message, is the source of truth, so a message missed while the service was down loses
nothing, and nothing is applied twice.
After each catch-up it calls `reconcile(projection)`, which must be idempotent (level-
triggered): act on the current state, append with deterministic event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from ember import topics
from ember.bus import Bus, Message
from ember.eventlog.base import EventLog, StoredEvent
from ember.events import RoundCompleted, event_streams
from ember.log import get_logger
from ember.metrics import EVENTS_APPENDED
from ember.projection import Projection

Reconcile = Callable[[Projection, list[StoredEvent]], Awaitable[None]]


class LogFollower:
    """`quiet` names event types that do not wake the follower: they are folded at the next
    catch-up. By default `RoundCompleted`: progress changes no state that a service's reconcile
    acts on, and a job can report dozens of rounds a second. The follower subscribes to each
    other type's topic, so a quiet event does not even reach the process (three services woken
    on every round, right when the learners start the next one, cost a busy 2-core machine
    about 2 ms of CPU a round). A type unknown to this process (a newer publisher) is picked up
    by the periodic resync."""

    def __init__(
        self,
        eventlog: EventLog,
        bus: Bus,
        reconcile: Reconcile,
        *,
        name: str,
        resync_every: float = 2.0,
        quiet: Collection[str] = (RoundCompleted.__name__,),
    ) -> None:
        self.eventlog = eventlog
        self.bus = bus
        self.projection = Projection()
        self._reconcile = reconcile
        self._wake = asyncio.Event()
        self._resync_every = resync_every
        self._quiet = frozenset(quiet)
        self.log = get_logger("ember.follower", consumer=name)
        for aggregate, event_type in event_streams(without=self._quiet):
            bus.subscribe(topics.EVENT, self._on_event, aggregate=aggregate, type=event_type)

    async def _on_event(self, _message: Message) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Catch up and reconcile now (e.g. when a node appeared or went offline)."""
        self._wake.set()

    async def catch_up(self) -> list[StoredEvent]:
        new = await self.eventlog.read(after=self.projection.last_seq)
        self.projection.apply_all(new)
        return new

    async def run(self) -> None:
        """Catch up, reconcile, wait for a wake-up (or a periodic resync as a safety net); repeat."""
        while True:
            self._wake.clear()  # before reading: an event published during reconcile wakes the next pass
            new = await self.catch_up()
            await self._reconcile(self.projection, new)
            try:
                await asyncio.wait_for(self._wake.wait(), self._resync_every)
            except TimeoutError:
                pass


async def append_and_publish(eventlog: EventLog, bus: Bus, envelope) -> StoredEvent:
    """Write to the log first, then publish on `events/{aggregate}/{type}` (not for duplicates).

    The publish is started, not awaited (`Bus.publish_soon`): the log is the truth, so the next
    append need not wait for the broker's ack, and a publish that fails (broker away) costs
    followers nothing but their next resync."""
    stored = await eventlog.append(envelope)
    if not stored.duplicate:
        EVENTS_APPENDED.labels(type=envelope.type).inc()
        topic = topics.EVENT.format(bus.root, aggregate=stored.aggregate, type=envelope.type)
        await bus.publish_soon(topic, stored.envelope)
    return stored
