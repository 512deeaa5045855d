"""Event log backends behind one interface; `open_eventlog(url)` picks one by URL scheme."""

from __future__ import annotations

from ember.eventlog.base import EventLog, StoredEvent

__all__ = ["EventLog", "StoredEvent", "open_eventlog"]


def open_eventlog(url: str) -> EventLog:
    """`sqlite:///abs/path.sqlite3` (embedded default) or `mongodb://host/db` (deployments)."""
    if url.startswith("sqlite:///"):
        from ember.eventlog.sqlite import SqliteEventLog

        return SqliteEventLog(url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :])
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from ember.eventlog.mongo import MongoEventLog

        return MongoEventLog(url)
    raise ValueError(f"unsupported event log URL {url!r}: use sqlite:///path or mongodb://host/db")
