"""Mock edge devices: simulator determinism, non-IID nodes, learnable faults, partitioner."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ember.devices.partition import digits_schema, partition_digits, split_indices
from ember.devices.profiles import FAULT_KINDS
from ember.devices.sensors import CHANNELS, DEFAULT_START_TS, READING_SCHEMA, Fleet, generate_table, iter_readings

pytestmark = pytest.mark.timeout(30)


def test_same_arguments_give_identical_tables_however_chunked() -> None:
    a = generate_table("edge-a", devices=3, seconds=2000, rate_hz=2.0, seed=11)
    b = generate_table("edge-a", devices=3, seconds=2000, rate_hz=2.0, seed=11)
    chunked = pa.concat_tables(Fleet("edge-a", 3, 2000, 2.0, seed=11).tables(333))
    assert a.equals(b)
    assert a.equals(chunked)
    assert not a.equals(generate_table("edge-a", devices=3, seconds=2000, rate_hz=2.0, seed=12))


def test_readings_have_schema_timestamps_ids_and_labels() -> None:
    table = generate_table("edge-b", devices=["pump-1", "pump-2"], seconds=3600, rate_hz=4.0, seed=3, start_ts=10**18)
    assert table.schema == READING_SCHEMA
    assert table.num_rows == 3600 * 4 * 2
    ts = table["ts"].to_numpy()
    assert ts[0] == 10**18 and ts[1] == 10**18  # both devices at the first tick
    assert set(np.diff(ts[::2]).tolist()) == {250_000_000}  # 4 Hz in ns
    assert table["device"].to_pylist()[:4] == ["pump-1", "pump-2", "pump-1", "pump-2"]
    assert set(table["node"].to_pylist()) == {"edge-b"}
    fault, kind = table["fault"].to_numpy(), np.asarray(table["fault_kind"].to_pylist())
    assert set(np.unique(fault).tolist()) == {0, 1}
    assert ((fault == 1) == (kind != "")).all()
    assert set(kind[fault == 1]) <= set(FAULT_KINDS)
    for name in CHANNELS:
        assert np.isfinite(table[name].to_numpy()).all()


def test_iter_readings_matches_the_table() -> None:
    table = generate_table("edge-a", 2, 300, 1.0, seed=5)
    rows = list(iter_readings("edge-a", 2, 300, 1.0, seed=5, chunk_ticks=17))
    assert rows == table.to_pylist()
    assert isinstance(rows[0]["ts"], int) and rows[0]["ts"] == DEFAULT_START_TS


def test_nodes_differ_in_operating_point_and_fault_rate() -> None:
    stats = {}
    for node in ("edge-a", "edge-b", "edge-c", "edge-d"):
        t = generate_table(node, 4, 4 * 3600, 1.0, seed=1)
        stats[node] = (float(np.mean(t["pressure_bar"].to_numpy())), float(np.mean(t["fault"].to_numpy())))
    pressures = [p for p, _ in stats.values()]
    fault_rates = [f for _, f in stats.values()]
    assert max(pressures) / min(pressures) > 1.2
    assert max(fault_rates) - min(fault_rates) > 0.03
    assert all(0.0 < f < 0.5 for f in fault_rates)


def _windows(table: pa.Table, width: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Per device, per non-overlapping window: mean and std of device-normalised channels."""
    devices = np.asarray(table["device"].to_pylist())
    features, labels = [], []
    for device in np.unique(devices):
        rows = devices == device
        x = np.stack([table[c].to_numpy()[rows] for c in CHANNELS], axis=1)
        x = (x - np.median(x, axis=0)) / x.std(axis=0)
        y = table["fault"].to_numpy()[rows]
        n = len(x) // width
        x, y = x[: n * width].reshape(n, width, -1), y[: n * width].reshape(n, width)
        features.append(np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1))
        labels.append(y.mean(axis=1) > 0.5)
    return np.concatenate(features), np.concatenate(labels)


@pytest.mark.parametrize("node", ["edge-a", "edge-b"])
def test_fault_episodes_are_learnable_on_another_seed(node: str) -> None:
    x_train, y_train = _windows(generate_table(node, 4, 4 * 3600, 1.0, seed=1))
    x_test, y_test = _windows(generate_table(node, 4, 4 * 3600, 1.0, seed=2))
    assert 0.02 < y_test.mean() < 0.5
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    model.fit(x_train, y_train)
    score = balanced_accuracy_score(y_test, model.predict(x_test))
    assert score > 0.75, score  # chance (and the majority baseline) is 0.5


# --- partitioner ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme,alpha", [("iid", 0.5), ("dirichlet", 0.1), ("dirichlet", 5.0)])
def test_partition_covers_every_row_exactly_once(scheme: str, alpha: float) -> None:
    split = partition_digits(5, scheme=scheme, alpha=alpha, seed=4, min_rows=20)  # type: ignore[arg-type]
    ids = np.concatenate([t["row_id"].to_numpy() for t in [*split.nodes.values(), split.test]])
    assert sorted(ids.tolist()) == list(range(1797))
    assert list(split.nodes) == [f"node-{i}" for i in range(5)]
    assert all(t.num_rows >= 20 for t in split.nodes.values())
    assert all(t.schema == digits_schema() for t in [*split.nodes.values(), split.test])
    assert set(split.test["label"].to_pylist()) == set(range(10))


def test_partition_is_deterministic_for_a_seed() -> None:
    a = partition_digits(["x", "y", "z"], scheme="dirichlet", alpha=0.3, seed=9)
    b = partition_digits(["x", "y", "z"], scheme="dirichlet", alpha=0.3, seed=9)
    c = partition_digits(["x", "y", "z"], scheme="dirichlet", alpha=0.3, seed=10)
    assert all(a.nodes[n].equals(b.nodes[n]) for n in "xyz") and a.test.equals(b.test)
    assert not all(a.nodes[n].equals(c.nodes[n]) for n in "xyz")


def _mean_top_label_share(split_nodes: dict[str, pa.Table]) -> float:
    shares = []
    for table in split_nodes.values():
        counts = Counter(table["label"].to_pylist())
        shares.append(max(counts.values()) / table.num_rows)
    return float(np.mean(shares))


def test_small_alpha_dirichlet_is_skewed_compared_to_iid() -> None:
    iid = partition_digits(8, scheme="iid", seed=2)
    skewed = partition_digits(8, scheme="dirichlet", alpha=0.1, seed=2)
    assert _mean_top_label_share(iid.nodes) < 0.2  # about 1/10 per label
    assert _mean_top_label_share(skewed.nodes) > 0.4
    sizes = [t.num_rows for t in iid.nodes.values()]
    assert max(sizes) - min(sizes) <= 1


def test_minimum_rows_are_guaranteed_even_for_extreme_skew() -> None:
    labels = np.repeat(np.arange(3), 40)
    parts = split_indices(labels, 10, "dirichlet", alpha=0.01, seed=0, min_rows=12)
    assert all(len(p) >= 12 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(120))
    with pytest.raises(ValueError, match="at least"):
        split_indices(labels, 11, "dirichlet", alpha=0.5, min_rows=12)
