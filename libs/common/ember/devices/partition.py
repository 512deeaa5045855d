"""Spread a known dataset over federated nodes, IID or label-skewed, to check FL results
against a centralized baseline.

The data is scikit-learn's bundled `load_digits` (1,797 8x8 images, 10 classes), read from
the installed package: nothing is downloaded. Every table has the columns `ts` (int64 ns),
`row_id` (int64, the row's index in `load_digits`), `pixel_0` .. `pixel_63` (float32, 0..16)
and `label` (int64).

    split = partition_digits(["edge-a", "edge-b", "edge-c"], scheme="dirichlet", alpha=0.3, seed=1)
    split.nodes["edge-a"]   # pyarrow.Table for that node
    split.test              # held-out, stratified test table (never sent to a node)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from ember.devices.profiles import rng_for
from ember.devices.sensors import DEFAULT_START_TS

Scheme = Literal["iid", "dirichlet"]
N_PIXELS = 64
_MAX_REDRAWS = 100


@dataclass(frozen=True)
class Partition:
    """Per-node training tables (in node order) and the held-out test table."""

    nodes: Mapping[str, pa.Table]
    test: pa.Table


def digits_schema() -> pa.Schema:
    """`ts`, `row_id`, `pixel_0..pixel_63` (float32), `label`."""
    return pa.schema(
        [("ts", pa.int64()), ("row_id", pa.int64())]
        + [(f"pixel_{i}", pa.float32()) for i in range(N_PIXELS)]
        + [("label", pa.int64())]
    )


def split_indices(
    labels: np.ndarray,
    k: int,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_rows: int = 10,
) -> list[np.ndarray]:
    """Assign every index of `labels` to exactly one of `k` parts.

    `iid`: a seeded shuffle cut into near-equal parts. `dirichlet`: for each class, the
    class's rows are split by proportions drawn from Dirichlet(alpha * 1_k) (small alpha,
    strong label skew). Draws where a part has fewer than `min_rows` rows are redrawn; if that
    keeps failing, rows move from the largest parts, so the minimum is always met.
    Returns sorted index arrays.
    """
    n = len(labels)
    if k < 1:
        raise ValueError("k must be >= 1")
    if n < k * min_rows:
        raise ValueError(f"{n} rows cannot give {k} parts at least {min_rows} rows each")
    if scheme not in ("iid", "dirichlet"):
        raise ValueError(f"unknown scheme {scheme!r} (use 'iid' or 'dirichlet')")
    if scheme == "dirichlet" and alpha <= 0:
        raise ValueError("alpha must be > 0")
    rng = rng_for(seed, 0x5917)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]
    for _ in range(_MAX_REDRAWS):
        parts = _dirichlet_draw(labels, k, alpha, rng)
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(p) for p in parts]
    return [np.sort(p) for p in _top_up(parts, min_rows, rng)]


def _dirichlet_draw(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(k, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for bucket, chunk in zip(buckets, np.split(rows, cuts), strict=True):
            bucket.append(chunk)
    return [np.concatenate(b) for b in buckets]


def _top_up(parts: list[np.ndarray], min_rows: int, rng: np.random.Generator) -> list[np.ndarray]:
    parts = [rng.permutation(p) for p in parts]
    for i in range(len(parts)):
        while len(parts[i]) < min_rows:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_rows - len(parts[i]), len(parts[donor]) - min_rows)
            parts[i] = np.concatenate([parts[i], parts[donor][:take]])
            parts[donor] = parts[donor][take:]
    return parts


def _table(images: np.ndarray, labels: np.ndarray, row_ids: np.ndarray, start_ts: int) -> pa.Table:
    columns: dict[str, object] = {
        "ts": start_ts + np.arange(len(row_ids), dtype=np.int64) * 1_000_000_000,
        "row_id": row_ids.astype(np.int64),
    }
    pixels = images[row_ids].astype(np.float32)
    columns.update({f"pixel_{i}": pixels[:, i] for i in range(N_PIXELS)})
    columns["label"] = labels[row_ids].astype(np.int64)
    return pa.Table.from_pydict(columns, schema=digits_schema())


def partition_digits(
    nodes: int | Sequence[str],
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_rows: int = 10,
    start_ts: int = DEFAULT_START_TS,
) -> Partition:
    """Split `load_digits` into a stratified test table and one training table per node.

    `nodes` is a count (names `node-0`, `node-1`, ...) or explicit node names. Rows of a node
    get `ts = start_ts + i` seconds in node order. Same arguments, same tables.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    names = [f"node-{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
    if len(set(names)) != len(names):
        raise ValueError("node names must be unique")
    digits = load_digits()
    images, labels = np.asarray(digits.data), np.asarray(digits.target)
    all_rows = np.arange(len(labels))
    train_rows, test_rows = train_test_split(
        all_rows, test_size=test_fraction, stratify=labels, random_state=int(seed) & 0xFFFFFFFF
    )
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    parts = split_indices(labels[train_rows], len(names), scheme, alpha, seed, min_rows)
    tables = {name: _table(images, labels, train_rows[part], start_ts) for name, part in zip(names, parts, strict=True)}
    return Partition(nodes=tables, test=_table(images, labels, test_rows, start_ts))
