"""Writes `<data-dir>/_summary.json` (`ember.datasummary`) for the node's flamelet.

mldata rewrites the file atomically (temp file, fsync, rename) after every put, flush and drop;
the flamelet reads it with `ember.datasummary.DataSummary.read`.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

from ember.datasummary import SUMMARY_FILE, DataSummary, TagSummary
from ember.mldata.store import PartitionStore

_write_lock = threading.Lock()


def summary_of(store: PartitionStore, node: str) -> DataSummary:
    """The store's current catalogue as a summary."""
    tags = {stats.tag: TagSummary.model_validate({k: v for k, v in stats.to_dict().items() if k != "tag"}) for stats in store.tags()}
    return DataSummary(node=node, updated=datetime.now(UTC), tags=tags)


def write_summary(store: PartitionStore, node: str) -> None:
    """Atomically replace the summary file with the store's current catalogue."""
    target = store.root / SUMMARY_FILE
    with _write_lock:
        text = summary_of(store, node).model_dump_json(indent=1)
        tmp = target.with_name(f".{SUMMARY_FILE}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
