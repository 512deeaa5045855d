"""MQTT ingestion, transport-free: validate readings, buffer them per tag, turn a buffer into
a partition. `ember.mldata.handlers` feeds it from the bus; `ember.mldata.app` runs the flushes.

A message on `data/{tag}` is an envelope whose `data` is `{"readings": [reading, ...]}` (a
single reading object is accepted too). A reading is a flat JSON object of scalars (number,
string, bool, null) with a `ts`: integer nanoseconds since the Unix epoch (as the mock
devices send), or an ISO 8601 string, which is converted to that. A reading that breaks these
rules is dropped and counted; a message that is not a valid envelope is dropped and counted.

Node: the topic has no node level, so on a broker shared by several nodes every mldata sees
every reading. A reading whose `node` field names another node is skipped (counted as
`readings_other_node`, not malformed); a reading without `node` is kept.

Column types: a tag that already has partitions imposes its schema (values are cast to it;
a value that cannot be cast drops its reading, counted; unknown fields are dropped, counted).
Otherwise the first flush infers them (int -> int64, float or int/float mix -> float64,
str -> string, bool -> bool) and fixes them for the tag.

What a crash can lose: readings are acknowledged to the broker when they arrive, so a
`kill -9` loses the readings buffered in memory and not yet flushed: at most `flush_rows`
readings per tag, or `flush_seconds` worth of them. A clean shutdown flushes every buffer;
messages published while mldata is down wait in its persistent MQTT session.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import pyarrow as pa

from ember.envelope import DecodeError, decode
from ember.log import get_logger
from ember.data.errors import InvalidTag
from ember.mldata.names import check_tag
from ember.mldata.store import PartitionStore, PutResult

log = get_logger("ember.mldata.ingest")
_SCALARS = (int, float, str, bool, type(None))
_CONVERT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


@dataclass(frozen=True)
class Batch:
    """Readings of one tag taken out of the buffer, ready to become a partition."""

    tag: str
    rows: list[dict[str, Any]]


def _iso_to_ns(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def check_reading(reading: Any) -> tuple[dict[str, Any] | None, str]:
    """(the reading, "") when valid, possibly with `ts` normalised; else (None, reason)."""
    if type(reading) is not dict:
        return None, "reading is not a JSON object"
    ts = reading.get("ts")
    if type(ts) is not int:
        if type(ts) is not str:
            return None, "reading has no integer (ns since epoch) or ISO 8601 'ts'"
        try:
            reading = {**reading, "ts": _iso_to_ns(ts)}
        except ValueError:
            return None, f"unparseable ts {ts[:40]!r}"
    for key, value in reading.items():
        if not isinstance(value, _SCALARS):
            return None, f"field {key[:40]!r} is not a scalar"
    return reading, ""


class Ingestor:
    """Per-tag buffers with size and age triggers; counts what it accepts and drops.

    `accept`, `take`, `due` and `take_all` run on the event loop; `flush` runs in a worker
    thread and touches only its own counters (`flushes`, `rows_flushed`, `readings_unfit`,
    `fields_ignored`, `flush_errors`, `readings_lost`).
    """

    def __init__(
        self,
        store: PartitionStore,
        *,
        flush_rows: int = 50_000,
        flush_seconds: float = 10.0,
        node: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.node = node
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._since: dict[str, float] = {}

    # Arrival ------------------------------------------------------------------------------
    def accept(self, tag: str, payload: bytes) -> Batch | None:
        """Take one message; returns the tag's batch when it reached `flush_rows`."""
        self.counters["messages"] += 1
        try:
            check_tag(tag)
            envelope = decode(payload)
        except (DecodeError, InvalidTag) as exc:
            self._malformed_message(tag, str(exc))
            return None
        readings = envelope.data.get("readings")
        if type(readings) is dict:
            readings = [readings]
        if type(readings) is not list or not readings:
            self._malformed_message(tag, "data.readings is not a non-empty list of readings")
            return None
        buffer = self._buffers.get(tag)
        if buffer is None:
            buffer = self._buffers[tag] = []
            self._since[tag] = self.clock()
        bad = elsewhere = 0
        for reading in readings:
            good, reason = check_reading(reading)
            if good is None:
                bad += 1
                if bad == 1:
                    log.warning("mldata.reading_dropped", tag=tag, reason=reason, message=envelope.id)
            elif self.node is not None and good.get("node", self.node) != self.node:
                elsewhere += 1  # another node's reading on a shared broker: not ours to keep
            else:
                buffer.append(good)
        self.counters["readings"] += len(readings) - bad - elsewhere
        if bad:
            self.counters["readings_malformed"] += bad
        if elsewhere:
            self.counters["readings_other_node"] += elsewhere
        return self.take(tag) if len(buffer) >= self.flush_rows else None

    def _malformed_message(self, tag: str, reason: str) -> None:
        self.counters["messages_malformed"] += 1
        log.warning("mldata.message_dropped", tag=tag[:200], reason=reason[:300])
        return None

    # Taking buffers -----------------------------------------------------------------------
    def take(self, tag: str) -> Batch | None:
        rows = self._buffers.pop(tag, None)
        self._since.pop(tag, None)
        return Batch(tag, rows) if rows else None

    def due(self) -> list[Batch]:
        """Buffers whose oldest reading is at least `flush_seconds` old."""
        now = self.clock()
        old = [tag for tag, since in self._since.items() if now - since >= self.flush_seconds]
        return [b for tag in old if (b := self.take(tag)) is not None]

    def take_all(self) -> list[Batch]:
        return [b for tag in list(self._buffers) if (b := self.take(tag)) is not None]

    def stats(self) -> dict[str, int]:
        """Counters plus `malformed` (all dropped readings and messages) and `buffered`."""
        out = dict(self.counters)
        out["malformed"] = sum(self.counters[k] for k in ("messages_malformed", "readings_malformed", "readings_unfit"))
        out["buffered"] = self.buffered
        return out

    @property
    def buffered(self) -> int:
        return sum(len(rows) for rows in self._buffers.values())

    # Flushing (blocking: run it in a thread) ----------------------------------------------
    def flush(self, batch: Batch) -> PutResult | None:
        """Write one batch as a partition; a refused or failed write is counted, logged."""
        table, dropped, ignored = readings_table(batch.rows, self.store.schema_of(batch.tag))
        if dropped:
            self.counters["readings_unfit"] += dropped
            log.warning("mldata.readings_dropped_at_flush", tag=batch.tag, readings=dropped, reason="values do not fit the tag's column types")
        if ignored:
            self.counters["fields_ignored"] += len(ignored)
            log.warning("mldata.fields_ignored", tag=batch.tag, fields=ignored[:20], reason="not in the tag's schema")
        if table.num_rows == 0:
            return None
        try:
            result = self.store.write_table(batch.tag, table)
        except Exception as exc:
            self.counters["flush_errors"] += 1
            self.counters["readings_lost"] += table.num_rows
            log.error("mldata.flush_failed", tag=batch.tag, rows=table.num_rows, error=str(exc)[:500])
            return None
        self.counters["flushes"] += 1
        self.counters["rows_flushed"] += table.num_rows
        log.info("mldata.buffer_flushed", tag=batch.tag, partition=result.partition.name, rows=table.num_rows)
        return result


def _infer_type(values: list[Any]) -> pa.DataType:
    kinds = Counter(type(v) for v in values if v is not None)
    if kinds[float] and kinds[int]:
        kinds[float] += kinds.pop(int)
    if not kinds:
        return pa.null()
    winner = kinds.most_common(1)[0][0]
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[winner]


def _bad_rows(values: list[Any], type_: pa.DataType) -> set[int]:
    bad = set()
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            pa.array([value], type=type_)
        except _CONVERT_ERRORS:
            bad.add(i)
    return bad


def readings_table(rows: list[dict[str, Any]], schema: pa.Schema | None) -> tuple[pa.Table, int, list[str]]:
    """(table, readings dropped, fields ignored): columnar conversion with a per-value
    fallback only for a column that does not convert in one go."""
    names = list(dict.fromkeys(chain.from_iterable(rows)))
    ignored: list[str] = []
    if schema is not None:
        ignored = [n for n in names if n not in schema.names]
        fields = [(f.name, None if pa.types.is_null(f.type) else f.type) for f in schema]
    else:
        fields = [(n, None) for n in names]
    bad: set[int] = set()
    arrays: list[pa.Array] = []
    for name, type_ in fields:
        values = [r.get(name) for r in rows]
        try:
            arrays.append(pa.array(values, type=type_))
        except _CONVERT_ERRORS:
            bad |= _bad_rows(values, type_ or _infer_type(values))
    if bad:
        kept = [r for i, r in enumerate(rows) if i not in bad]
        if not kept:
            return pa.table({}), len(rows), ignored
        table, more, _ = readings_table(kept, schema)
        return table, len(bad) + more, ignored
    return pa.Table.from_arrays(arrays, names=[name for name, _ in fields]), 0, ignored
