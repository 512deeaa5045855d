"""The event log: append-only, a monotonically increasing `seq` and a unique event id.

Appending an envelope whose id is already in the log is a no-op that returns the stored
event with `duplicate=True`: deterministic ids (see `ember.events.fact_id`) make every
service's redo after a crash harmless.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ember.envelope import Envelope
from ember.events import aggregate_of


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    aggregate: str
    envelope: Envelope
    duplicate: bool = False

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def subject(self) -> str:
        return self.envelope.subject


class EventLog(ABC):
    """One interface, two backends (SQLite, MongoDB); both pass `tests/test_eventlog.py`."""

    @abstractmethod
    async def append(self, envelope: Envelope, *, aggregate: str | None = None) -> StoredEvent:
        """Store one event (idempotent on `envelope.id`)."""

    @abstractmethod
    async def read(self, after: int = 0, *, limit: int | None = None, subject: str | None = None) -> list[StoredEvent]:
        """Events with `seq > after` in sequence order, optionally for one subject."""

    @abstractmethod
    async def get(self, event_id: str) -> StoredEvent | None: ...

    @abstractmethod
    async def last_seq(self) -> int: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    def aggregate_for(envelope: Envelope, aggregate: str | None) -> str:
        return aggregate or aggregate_of(envelope.type)
