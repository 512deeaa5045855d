"""`<data-dir>/_summary.json`: the node's data tags for its flamelet's node info.

mldata rewrites the file atomically (temp file, fsync, rename) after every put, flush and
drop. Format (version 1):

    {"v": 1, "node": "n1", "updated": "2025-01-01T00:00:00+00:00",
     "tags": {"turbine": {"partitions": 3, "rows": 120000, "bytes": 2400000,
                          "first_ts": "...", "last_ts": "..."}}}

A flamelet reads it with `node_data_summary(data_dir)` (tags -> rows); nothing is published.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ember.mldata.store import PartitionStore

SUMMARY_FILE = "_summary.json"
_write_lock = threading.Lock()


def summary_document(store: PartitionStore, node: str) -> dict[str, Any]:
    tags = {}
    for stats in store.tags():
        entry = stats.to_dict()
        del entry["tag"]
        tags[stats.tag] = entry
    return {"v": 1, "node": node, "updated": datetime.now(UTC).isoformat(), "tags": tags}


def write_summary(store: PartitionStore, node: str) -> Path:
    """Atomically replace the summary file with the store's current catalogue."""
    target = store.root / SUMMARY_FILE
    with _write_lock:
        doc = summary_document(store, node)
        tmp = target.with_name(f".{SUMMARY_FILE}.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    return target


def read_summary(data_dir: Path | str) -> dict[str, Any]:
    """The whole summary document; an empty one when the file is absent or unreadable."""
    try:
        doc = json.loads((Path(data_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {"v": 1, "node": "", "updated": None, "tags": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("tags"), dict) else {"v": 1, "tags": {}}


def node_data_summary(data_dir: Path | str) -> dict[str, int]:
    """Data tags on this node and their row counts, e.g. `{"turbine": 120000}`."""
    return {tag: int(entry.get("rows", 0)) for tag, entry in read_summary(data_dir)["tags"].items()}
