"""`<data-dir>/_summary.json`: the data tags a node's mldata holds, which its flamelet announces.

mldata writes it (`ember.mldata.summary.write_summary`, atomically, after every put, flush and
drop); the flamelet on the same node reads it (`DataSummary.read`) into its `NodeInfo.data` and
re-announces when the file changes (`summary_stamp`). Nothing else reads it and nothing is published.
Format (version 1):

    {"v": 1, "node": "n1", "updated": "2025-01-01T00:00:00+00:00",
     "tags": {"turbine": {"partitions": 3, "rows": 120000, "bytes": 2400000,
                          "first_ts": "...", "last_ts": "..."}}}
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

SUMMARY_FILE = "_summary.json"


class TagSummary(BaseModel):
    partitions: int = 0
    rows: int = 0
    bytes: int = 0
    first_ts: Any = None
    last_ts: Any = None


class DataSummary(BaseModel):
    v: Literal[1] = 1
    node: str = ""
    updated: datetime | None = None
    tags: dict[str, TagSummary] = Field(default_factory=dict)

    @classmethod
    def read(cls, data_dir: Path | str | None) -> DataSummary:
        """The summary in `data_dir`; an empty one when there is none or it does not parse."""
        if data_dir is None:
            return cls()
        try:
            return cls.model_validate_json((Path(data_dir) / SUMMARY_FILE).read_bytes())
        except (OSError, ValidationError):
            return cls()

    def rows(self) -> dict[str, int]:
        """Tag -> rows held, e.g. `{"turbine": 120000}` (`NodeInfo.data`)."""
        return {tag: entry.rows for tag, entry in self.tags.items()}


def summary_stamp(data_dir: Path | str | None) -> float | None:
    """Modification time of the summary file (None when absent): a change means new tags."""
    try:
        return (Path(data_dir) / SUMMARY_FILE).stat().st_mtime if data_dir is not None else None
    except OSError:
        return None
