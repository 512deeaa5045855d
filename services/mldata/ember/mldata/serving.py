"""Arrow IPC serving copies of the Parquet partitions: what `do_get` streams when it can.

A partition's durable form is its Parquet file. Decoding Parquet costs more than sending the
decoded batches over Flight, so a loader fed by decoding on the fly is slower than a local
`pq.read_table` (docs/benchmarks.md, "Data plane"). So once a partition is committed (and at
start-up, for every partition without one) a background thread writes
`serving/<tag>.<digest>.arrow`: the partition's batches in Arrow's IPC file format, written to a
temporary name and renamed. `do_get` memory-maps it (no decoding, no copy into the heap).

The copies are derived data, never the truth: one that is missing (not written yet), unreadable
or whose row count disagrees with its partition is removed and the Parquet file is streamed
instead; deleting `serving/` loses nothing. They cost about the partition's uncompressed size on
disk (`EMBER_MLDATA_SERVING_COPIES=false` turns them off).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ember.log import get_logger
from ember.mldata.names import TMP_PREFIX

log = get_logger("ember.mldata.serving")
SERVING_DIR = "serving"
COPY_BATCH_ROWS = 1 << 17
"""Rows per record batch in a serving copy (what `do_get` then streams)."""


class ServingCopies:
    """The `serving/` folder of one data directory; one writer thread, thread-safe reads."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / SERVING_DIR
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()

    def open(self, keep: Iterable[str]) -> None:
        """Create the folder; remove unfinished copies and copies of partitions that are gone."""
        self.dir.mkdir(exist_ok=True)
        wanted = {self.path(name).name for name in keep}
        for entry in os.scandir(self.dir):
            if entry.name.startswith(TMP_PREFIX) or entry.name not in wanted:
                os.unlink(entry.path)
        self._stop.clear()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mldata-serving")

    def close(self) -> None:
        """Stop writing (an unfinished copy is abandoned) and wait for the writer thread."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def path(self, name: str) -> Path:
        return self.dir / (name.removesuffix(".parquet") + ".arrow")

    def schedule(self, name: str, parquet: Path, alive: Callable[[str], bool]) -> Future[None] | None:
        """Write the copy of partition `name` in the background (no-op when it is there)."""
        if self._pool is None:
            return None
        return self._pool.submit(self._write, name, parquet, alive)

    def batches(self, name: str, rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]] | None:
        """The copy's schema and batches (memory-mapped), or None to stream the Parquet file."""
        path = self.path(name)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]  # zero-copy views
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError) as exc:
            log.warning("mldata.serving_copy_unreadable", partition=name, error=str(exc)[:200])
            path.unlink(missing_ok=True)
            return None
        count = sum(batch.num_rows for batch in batches)
        if count != rows:
            log.warning("mldata.serving_copy_mismatch", partition=name, rows=count, expected=rows)
            path.unlink(missing_ok=True)
            return None
        return reader.schema, iter(batches)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def _write(self, name: str, parquet: Path, alive: Callable[[str], bool]) -> None:
        final = self.path(name)
        if final.exists() or self._stop.is_set():
            return
        tmp = self.dir / f"{TMP_PREFIX}{uuid.uuid4().hex}.arrow"
        try:
            source = pq.ParquetFile(parquet)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, source.schema_arrow) as writer:
                for batch in source.iter_batches(batch_size=COPY_BATCH_ROWS, use_threads=False):
                    if self._stop.is_set():
                        raise InterruptedError("mldata is stopping")
                    writer.write_batch(batch)
            os.replace(tmp, final)
        except (InterruptedError, FileNotFoundError):  # stopping, or the partition was dropped
            tmp.unlink(missing_ok=True)
            return
        except Exception:
            log.exception("mldata.serving_copy_failed", partition=name)
            tmp.unlink(missing_ok=True)
            return
        if not alive(name):  # dropped while its copy was written
            final.unlink(missing_ok=True)
            return
        log.debug("mldata.serving_copy_written", partition=name)
