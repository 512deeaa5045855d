"""SQLite (WAL) event log: the embedded default; several processes may share one file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ember.envelope import Envelope
from ember.eventlog.base import EventLog, StoredEvent

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    aggregate TEXT NOT NULL,
    subject TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_subject ON events(subject, seq);
"""


def _use_wal(db: sqlite3.Connection, timeout: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Put the database in WAL mode (a property of the file: once set, it stays).

    Switching needs the file to itself, and SQLite answers "database is locked" at once, without
    waiting out the busy timeout, while another connection has it open, as when the services
    that start together (manager, builder, notifier) open a new file. So read the mode first (no
    lock needed) and retry the switch until the timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class SqliteEventLog(EventLog):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
        _use_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.executescript(SCHEMA)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    async def _run_short(self, fn: Callable[..., T], *args: Any) -> T:
        """A short write (an append): on the caller's thread when the database is free at once,
        which saves a thread hop and the event loop's wake-up (a socket write, which costs about
        as much as the append itself); in a worker thread, waiting up to `busy_timeout`, when
        another connection holds the write lock (or another call holds this connection)."""
        if self._lock.acquire(blocking=False):
            try:
                self._db.execute("PRAGMA busy_timeout=0")
                try:
                    return fn(*args)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                finally:
                    self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            finally:
                self._lock.release()
        return await self._run(fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def _append(self, envelope: Envelope, aggregate: str) -> StoredEvent:
        body = envelope.model_dump_json()
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events (id, aggregate, subject, type, body) VALUES (?, ?, ?, ?, ?)",
            (envelope.id, aggregate, envelope.subject, envelope.type, body),
        )
        if cur.rowcount == 1 and cur.lastrowid is not None:
            return StoredEvent(cur.lastrowid, aggregate, envelope)
        row = self._db.execute("SELECT seq, aggregate, body FROM events WHERE id = ?", (envelope.id,)).fetchone()
        return StoredEvent(row[0], row[1], Envelope.model_validate_json(row[2]), duplicate=True)

    async def append(self, envelope: Envelope, *, aggregate: str | None = None) -> StoredEvent:
        return await self._run_short(self._append, envelope, self.aggregate_for(envelope, aggregate))

    def _read(self, after: int, limit: int | None, subject: str | None) -> list[StoredEvent]:
        sql, args = "SELECT seq, aggregate, body FROM events WHERE seq > ?", list[int | str]([after])
        if subject is not None:
            sql += " AND subject = ?"
            args.append(subject)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [StoredEvent(s, a, Envelope.model_validate_json(b)) for s, a, b in self._db.execute(sql, args)]

    async def read(self, after: int = 0, *, limit: int | None = None, subject: str | None = None) -> list[StoredEvent]:
        return await self._run(self._read, after, limit, subject)

    async def get(self, event_id: str) -> StoredEvent | None:
        def fetch() -> StoredEvent | None:
            row = self._db.execute("SELECT seq, aggregate, body FROM events WHERE id = ?", (event_id,)).fetchone()
            return StoredEvent(row[0], row[1], Envelope.model_validate_json(row[2])) if row else None

        return await self._run(fetch)

    async def last_seq(self) -> int:
        def fetch() -> int:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

        return await self._run(fetch)

    async def close(self) -> None:
        await self._run(self._db.close)
