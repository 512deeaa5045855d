"""Per-round bookkeeping of what went over the grid: who took part, who failed, how long.

The grid records every instruction and reply by round: the `server-round` that Flower's
strategies put in every message's config record, else the message's `group_id`. A round's metrics are either the strategy's own aggregates
(ModelManager jobs, where Ember drives the strategy) or, for a user's ServerApp whose strategy
Ember cannot see, the example-weighted mean of the reply metrics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundStats:
    """One finished round, shaped like `ember.events.RoundCompleted`."""

    round: int
    metrics: dict[str, float]
    duration_s: float
    learners: list[str]
    failed: list[str]

    def event_data(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "metrics": self.metrics,
            "duration_s": round(self.duration_s, 4),
            "learners": self.learners,
            "failed": self.failed,
        }

    @classmethod
    def from_event_data(cls, data: dict[str, Any]) -> RoundStats:
        return cls(
            round=int(data["round"]),
            metrics=dict(data.get("metrics", {})),
            duration_s=float(data.get("duration_s", 0.0)),
            learners=list(data.get("learners", [])),
            failed=list(data.get("failed", [])),
        )


@dataclass
class _Open:
    started: float
    learners: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


def round_key(message: Any) -> str:
    """The round a Flower instruction belongs to: its config's `server-round`, else its group id."""
    if message.has_content():
        for record in message.content.config_records.values():
            if "server-round" in record:
                return str(record["server-round"])
    return message.metadata.group_id


def flatten_metrics(train: Any, evaluate: Any) -> dict[str, float]:
    """`train_*` / `eval_*` floats from two MetricRecord-like mappings (None allowed)."""
    out: dict[str, float] = {}
    for prefix, record in (("train_", train), ("eval_", evaluate)):
        for key, value in dict(record or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[prefix + key.replace("-", "_")] = float(value)
    return out


class RoundBook:
    """Thread-safe: the grid writes from the strategy's thread, the aggregator reads."""

    def __init__(self, weight_key: str = "num-examples") -> None:
        self.weight_key = weight_key
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}
        self._finished: set[int] = set()
        self._counter = 0
        self._ids: dict[str, int] = {}

    def round_of(self, group_id: str) -> int:
        """The round number of a group id (an int string, else numbered in order of first use)."""
        with self._lock:
            if group_id in self._ids:
                return self._ids[group_id]
            try:
                number = int(group_id)
            except ValueError:
                self._counter += 1
                number = self._counter
            self._ids[group_id] = number
            return number

    def sent(self, key: str) -> int:
        number = self.round_of(key)
        with self._lock:
            self._open.setdefault(number, _Open(time.monotonic()))
        return number

    def replied(self, number: int, actor: str, *, ok: bool, kind: str = "", metrics: dict[str, Any] | None = None) -> None:
        with self._lock:
            entry = self._open.setdefault(number, _Open(time.monotonic()))
            (entry.learners if ok else entry.failed).add(actor)
            if ok and metrics:
                prefix = "eval_" if kind.startswith("evaluate") else "train_"
                weight = float(metrics.get(self.weight_key, 1.0) or 0.0)
                for key, value in metrics.items():
                    if key == self.weight_key or isinstance(value, bool) or not isinstance(value, (int, float)):
                        continue
                    name = prefix + key.replace("-", "_")
                    entry.sums[name] = entry.sums.get(name, 0.0) + weight * float(value)
                    entry.weights[name] = entry.weights.get(name, 0.0) + weight

    def open_rounds(self) -> list[int]:
        with self._lock:
            return sorted(self._open)

    def finish(self, number: int, metrics: dict[str, float] | None = None) -> RoundStats | None:
        """Close a round; `metrics` overrides the reply means. None if it was never opened."""
        with self._lock:
            entry = self._open.pop(number, None)
            if entry is None or number in self._finished:
                return None
            self._finished.add(number)
        if metrics is None:
            metrics = {k: entry.sums[k] / entry.weights[k] for k in entry.sums if entry.weights.get(k)}
        return RoundStats(number, metrics, time.monotonic() - entry.started, sorted(entry.learners), sorted(entry.failed))
