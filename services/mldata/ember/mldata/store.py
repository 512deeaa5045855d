"""The partition store: one immutable Parquet file per upload or flush, named by its content.

A partition is written to a hidden temporary file in the data directory, fsynced, renamed to
`<tag>.<sha256>.parquet` and the directory fsynced, so a reader (or a restart after `kill -9`)
never sees a partial file. The digest is the SHA-256 of the Parquet bytes, computed while they
are written: the same upload (same schema, batches and values) gives the same bytes and is
stored once. The first partition of a tag fixes its schema (see `ember.mldata.schema`).

One process owns a data directory (an advisory `flock` on `.lock` enforces it); its in-memory
catalogue is built at start-up from the partition footers and kept current on every change.
Reads stream each partition's Arrow IPC serving copy when it has one (`ember.mldata.serving`).
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ember.errors import InvalidRequest, Unavailable
from ember.mldata import schema as schemas
from ember.data.errors import PartitionNotFound, SchemaMismatch
from ember.mldata.names import PARTITION_RE, TMP_PREFIX, check_tag, parse_partition, partition_name
from ember.mldata.prefetch import prefetch
from ember.mldata.serving import ServingCopies
from ember.mldata.sink import HashingSink, fsync_dir

TS_COLUMN = "ts"


@dataclass(frozen=True)
class Partition:
    name: str
    tag: str
    rows: int
    bytes: int
    schema: pa.Schema
    first_ts: Any = None
    last_ts: Any = None


@dataclass(frozen=True)
class PutResult:
    partition: Partition
    duplicate: bool


@dataclass(frozen=True)
class TagStats:
    tag: str
    partitions: int
    rows: int
    bytes: int
    first_ts: Any = None
    last_ts: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "partitions": self.partitions,
            "rows": self.rows,
            "bytes": self.bytes,
            "first_ts": _jsonable(self.first_ts),
            "last_ts": _jsonable(self.last_ts),
        }


class PartitionStore:
    """Parquet partitions of one node; thread-safe (Flight calls run on a thread pool)."""

    def __init__(
        self,
        root: Path,
        *,
        compression: str = "none",
        row_group_rows: int = 1 << 20,
        row_group_bytes: int = 256 << 20,
        on_change: Callable[[PartitionStore], None] | None = None,
        serving_copies: bool = True,
    ) -> None:
        self.root = Path(root)
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.on_change = on_change
        self._lock = threading.Lock()
        self._parts: dict[str, Partition] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._lock_fd: int | None = None
        self.serving = ServingCopies(self.root) if serving_copies else None

    # Lifecycle ----------------------------------------------------------------------------
    def open(self) -> PartitionStore:
        """Lock the directory, sweep unfinished uploads, load the catalogue."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(f"data directory {self.root} is in use by another mldata process") from None
        self._lock_fd = fd
        for entry in os.scandir(self.root):
            if entry.name.startswith(TMP_PREFIX):
                os.unlink(entry.path)
        found = sorted((e for e in os.scandir(self.root) if PARTITION_RE.match(e.name)), key=lambda e: e.stat().st_mtime_ns)
        for entry in found:
            part = self._read_partition(Path(entry.path), entry.name)
            self._parts[part.name] = part
            ref = self._schemas.get(part.tag)
            self._schemas[part.tag] = part.schema if ref is None else schemas.merge(ref, part.schema)
        if self.serving is not None:
            self.serving.open(keep=self._parts)
            for part in self._parts.values():
                self._serve(part)
        return self

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        if self.serving is not None:
            self.serving.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> PartitionStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Reading ------------------------------------------------------------------------------
    def partitions(self, tags: Iterable[str] | None = None) -> list[Partition]:
        """Partitions of `tags` (all when None), oldest first within the catalogue order."""
        wanted = None if tags is None else {check_tag(t) for t in tags}
        with self._lock:
            return [p for p in self._parts.values() if wanted is None or p.tag in wanted]

    def get(self, name: str) -> Partition:
        parse_partition(name)
        with self._lock:
            part = self._parts.get(name)
        if part is None:
            raise PartitionNotFound(f"no partition {name!r}")
        return part

    def path(self, name: str) -> Path:
        return self.root / self.get(name).name

    def iter_batches(self, name: str, batch_size: int = 1 << 17) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Stream one partition, never loading it whole: its memory-mapped serving copy when it
        has one (batches as written there), else the Parquet file, `batch_size` rows at a time."""
        part = self.get(name)
        if self.serving is not None and (copy := self.serving.batches(name, part.rows)) is not None:
            return copy
        parquet = pq.ParquetFile(self.root / part.name, pre_buffer=True)
        return parquet.schema_arrow, prefetch(parquet.iter_batches(batch_size=batch_size, use_threads=True))

    def schema_of(self, tag: str) -> pa.Schema | None:
        with self._lock:
            return self._schemas.get(check_tag(tag))

    def tags(self) -> list[TagStats]:
        by_tag: dict[str, list[Partition]] = {}
        for part in self.partitions():
            by_tag.setdefault(part.tag, []).append(part)
        return [_tag_stats(tag, parts) for tag, parts in sorted(by_tag.items())]

    # Writing ------------------------------------------------------------------------------
    def check_schema(self, tag: str, schema: pa.Schema) -> None:
        """Refuse early (before any byte is written) a schema the tag cannot take."""
        ref = self.schema_of(tag)
        if ref is not None and (differences := schemas.diff(ref, schema)):
            raise SchemaMismatch(schemas.describe_diff(tag, differences), details=differences)

    def write(self, tag: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> PutResult:
        """Write `batches` as one new partition of `tag`; atomic and deduplicated."""
        check_tag(tag)
        self.check_schema(tag, schema)
        tmp = self.root / f"{TMP_PREFIX}{tag}.{uuid.uuid4().hex}"
        sink: HashingSink | None = None
        try:
            with open(tmp, "wb") as raw:
                sink = HashingSink(raw)
                rows = self._write_parquet(sink, schema, batches)
                raw.flush()
                os.fsync(raw.fileno())
            if rows == 0:
                raise InvalidRequest(f"empty upload for tag {tag!r}: no rows")
            name = partition_name(tag, sink.hexdigest())
            part = self._read_partition(tmp, name)
            return self._commit(part, tmp)
        finally:
            if sink is not None:
                sink.abandon()
            tmp.unlink(missing_ok=True)

    def write_table(self, tag: str, table: pa.Table) -> PutResult:
        return self.write(tag, table.schema, table.to_batches())

    def drop(self, *, name: str | None = None, tag: str | None = None) -> list[str]:
        """Delete one partition by name, or every partition of a tag; returns the names."""
        if (name is None) == (tag is None):
            raise InvalidRequest("drop needs exactly one of 'partition' or 'tag'")
        if name is not None:
            parse_partition(name)
        else:
            check_tag(tag)  # type: ignore[arg-type]
        with self._lock:
            doomed = [p for p in self._parts.values() if p.name == name or p.tag == tag]
            if name is not None and not doomed:
                raise PartitionNotFound(f"no partition {name!r}")
            for part in doomed:
                os.unlink(self.root / part.name)
                del self._parts[part.name]
                if self.serving is not None:
                    self.serving.remove(part.name)
            for part in doomed:
                if not any(p.tag == part.tag for p in self._parts.values()):
                    self._schemas.pop(part.tag, None)
            if doomed:
                fsync_dir(self.root)
        if doomed:
            self._changed()
        return [p.name for p in doomed]

    # Internals ----------------------------------------------------------------------------
    def _write_parquet(self, sink: HashingSink, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """Group incoming batches into large row groups (small ones make slow, big files)."""
        rows = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = pending_bytes = 0
        with pq.ParquetWriter(sink, schema, compression=self.compression) as writer:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                pending.append(batch)
                pending_rows += batch.num_rows
                pending_bytes += batch.nbytes
                if pending_rows >= self.row_group_rows or pending_bytes >= self.row_group_bytes:
                    writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=self.row_group_rows)
                    rows += pending_rows
                    pending, pending_rows, pending_bytes = [], 0, 0
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=self.row_group_rows)
                rows += pending_rows
        return rows

    def _commit(self, part: Partition, tmp: Path) -> PutResult:
        with self._lock:
            existing = self._parts.get(part.name)
            if existing is not None:
                return PutResult(existing, duplicate=True)
            ref = self._schemas.get(part.tag)
            if ref is not None and (differences := schemas.diff(ref, part.schema)):
                # A concurrent first put fixed the schema after our early check.
                raise SchemaMismatch(schemas.describe_diff(part.tag, differences), details=differences)
            os.rename(tmp, self.root / part.name)
            fsync_dir(self.root)
            self._parts[part.name] = part
            self._schemas[part.tag] = part.schema if ref is None else schemas.merge(ref, part.schema)
        self._serve(part)
        self._changed()
        return PutResult(part, duplicate=False)

    def _serve(self, part: Partition) -> None:
        """Have the serving copy of `part` written in the background."""
        if self.serving is not None:
            self.serving.schedule(part.name, self.root / part.name, alive=lambda name: name in self._parts)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    @staticmethod
    def _read_partition(path: Path, name: str) -> Partition:
        tag, _ = parse_partition(name)
        meta = pq.read_metadata(path)
        arrow_schema = meta.schema.to_arrow_schema()
        first, last = _ts_range(meta, arrow_schema)
        return Partition(name, tag, meta.num_rows, path.stat().st_size, arrow_schema, first, last)


def _ts_range(meta: pq.FileMetaData, schema: pa.Schema) -> tuple[Any, Any]:
    """Min and max of the `ts` column from the row-group statistics (no data read)."""
    if TS_COLUMN not in schema.names:
        return None, None
    index = meta.schema.names.index(TS_COLUMN) if TS_COLUMN in meta.schema.names else -1
    if index < 0:
        return None, None
    lows, highs = [], []
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(index).statistics
        if stats is not None and stats.has_min_max:
            lows.append(stats.min)
            highs.append(stats.max)
    try:
        return (min(lows), max(highs)) if lows else (None, None)
    except TypeError:
        return None, None


def _tag_stats(tag: str, parts: list[Partition]) -> TagStats:
    firsts = [p.first_ts for p in parts if p.first_ts is not None]
    lasts = [p.last_ts for p in parts if p.last_ts is not None]
    try:
        first, last = (min(firsts) if firsts else None), (max(lasts) if lasts else None)
    except TypeError:
        first = last = None
    return TagStats(tag, len(parts), sum(p.rows for p in parts), sum(p.bytes for p in parts), first, last)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
