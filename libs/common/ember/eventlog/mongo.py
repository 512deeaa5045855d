"""MongoDB event log through PyMongo's asyncio API (`AsyncMongoClient`), for deployments.

`seq` comes from a counter document (`$inc`); a unique index on the event id makes appends
idempotent. Two concurrent writers can commit seq N+1 before N; readers that follow the log
tolerate that by reading again after the last seq they applied (projections ignore seqs they
have applied).
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from ember.envelope import Envelope
from ember.eventlog.base import EventLog, StoredEvent


class MongoEventLog(EventLog):
    def __init__(self, url: str, database: str = "ember") -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
        db = self._client.get_default_database(default=database)
        self._events = db["events"]
        self._counters = db["counters"]
        self._ready = False

    async def _setup(self) -> None:
        if not self._ready:
            await self._events.create_index("id", unique=True)
            await self._events.create_index("seq", unique=True)
            await self._events.create_index([("subject", 1), ("seq", 1)])
            self._ready = True

    @staticmethod
    def _stored(doc: dict[str, Any], duplicate: bool = False) -> StoredEvent:
        return StoredEvent(doc["seq"], doc["aggregate"], Envelope.model_validate_json(doc["body"]), duplicate)

    async def append(self, envelope: Envelope, *, aggregate: str | None = None) -> StoredEvent:
        await self._setup()
        existing = await self._events.find_one({"id": envelope.id})
        if existing:
            return self._stored(existing, duplicate=True)
        counter = await self._counters.find_one_and_update(
            {"_id": "events"}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        if counter is None:
            raise RuntimeError("MongoDB returned no events counter after an upsert")
        doc = {
            "seq": counter["seq"],
            "id": envelope.id,
            "aggregate": self.aggregate_for(envelope, aggregate),
            "subject": envelope.subject,
            "type": envelope.type,
            "body": envelope.model_dump_json(),
        }
        try:
            await self._events.insert_one(doc)
        except DuplicateKeyError:
            # Same id raced in from another writer: the seq we took stays a hole, readers skip it.
            await self._events.insert_one({"seq": counter["seq"], "id": f"hole:{counter['seq']}", "aggregate": "hole", "subject": "", "type": "hole", "body": ""})
            raced = await self._events.find_one({"id": envelope.id})
            if raced is None:
                raise RuntimeError(f"event {envelope.id} was a duplicate key but cannot be read back") from None
            return self._stored(raced, duplicate=True)
        return self._stored(doc)

    async def read(self, after: int = 0, *, limit: int | None = None, subject: str | None = None) -> list[StoredEvent]:
        await self._setup()
        query: dict[str, Any] = {"seq": {"$gt": after}, "type": {"$ne": "hole"}}
        if subject is not None:
            query["subject"] = subject
        cursor = self._events.find(query).sort("seq", 1)
        if limit is not None:
            cursor = cursor.limit(limit)
        return [self._stored(doc) async for doc in cursor]

    async def get(self, event_id: str) -> StoredEvent | None:
        await self._setup()
        doc = await self._events.find_one({"id": event_id})
        return self._stored(doc) if doc else None

    async def last_seq(self) -> int:
        await self._setup()
        doc = await self._events.find_one({}, sort=[("seq", -1)])
        return doc["seq"] if doc else 0

    async def close(self) -> None:
        await self._client.close()
