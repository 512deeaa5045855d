"""Durable, hashed file writing for partitions."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, BinaryIO


class HashingSink:
    """A write-only file object for the Parquet writer: bytes go to `raw` and, through a
    queue, to a SHA-256 in a helper thread, so hashing overlaps encoding (a second core).
    The helper also starts writeback every `SYNC_EVERY` bytes, so the final fsync is short."""

    SYNC_EVERY = 16 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.position = 0
        self.closed = False
        self._sha = hashlib.sha256()
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._hasher = threading.Thread(target=self._hash, name="mldata-sha256", daemon=True)
        self._hasher.start()

    def _hash(self) -> None:
        unsynced = 0
        for chunk in iter(self._chunks.get, None):
            self._sha.update(chunk)
            unsynced += len(chunk)
            if unsynced >= self.SYNC_EVERY:
                unsynced = 0
                try:
                    os.fdatasync(self.raw.fileno())
                except (OSError, ValueError):  # closed under us: the final fsync decides
                    pass

    def write(self, data: Any) -> int:
        chunk = bytes(data)  # pyarrow hands over immutable bytes: no copy then
        written = self.raw.write(chunk)
        self._chunks.put(chunk)
        self.position += written
        return written

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.closed = True

    def hexdigest(self) -> str:
        """Wait for the hasher; call once, after the writer is closed."""
        self._chunks.put(None)
        self._hasher.join()
        return self._sha.hexdigest()

    def abandon(self) -> None:
        if self._hasher.is_alive():
            self._chunks.put(None)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
