"""Checkpoints: format, digests, the two stores (one contract), the background writer and
restoring a Flower strategy's state."""

import random
import threading

import numpy as np
import pytest

from ember.fl.checkpoint import (
    Checkpoint,
    CheckpointWriter,
    LocalStore,
    MlflowStore,
    decode,
    encode,
    latest,
    name_of,
    ordered,
    restore_strategy,
    rng_from_json,
    rng_to_json,
    strategy_state,
)
from ember.fl.strategies import strategy_class
from ember.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def sample(round_number: int) -> Checkpoint:
    rng = np.random.default_rng(round_number)
    return Checkpoint(
        round=round_number,
        parameters=[rng.normal(size=(3, 2)), rng.normal(size=2).astype(np.float32)],
        strategy={"m_t": {"w": rng.normal(size=(3, 2))}, "momentum_vector": [rng.normal(size=2)]},
        history=[{"round": r, "metrics": {"eval_loss": 1.0 / r}} for r in range(1, round_number + 1)],
        rng=rng_to_json(random.Random(round_number).getstate()),
        strategy_name="FedAdam",
    )


def same(a: Checkpoint, b: Checkpoint) -> bool:
    return (
        a.round == b.round
        and all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a.parameters, b.parameters, strict=True))
        and np.array_equal(a.strategy["m_t"]["w"], b.strategy["m_t"]["w"])
        and np.array_equal(a.strategy["momentum_vector"][0], b.strategy["momentum_vector"][0])
        and a.history == b.history
        and rng_from_json(a.rng) == rng_from_json(b.rng)
    )


def test_encode_decode_round_trip():
    checkpoint = sample(4)
    data, digest = encode(checkpoint)
    assert len(digest) == 64
    assert same(decode(data), checkpoint)
    assert encode(checkpoint)[1] == digest  # the same content, the same name


@pytest.fixture(params=["local", "mlflow"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "ckpt")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.sqlite3'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ckpt", artifact_location=(tmp_path / "mlartifacts").as_uri())
    return MlflowStore(uri, client.create_run(experiment).info.run_id)


def test_store_contract(store):
    assert store.names() == [] and latest(store) is None
    for number in (1, 2):
        data, digest = encode(sample(number))
        store.put(name_of(number, digest), data)
    names = store.names()
    assert [r for r, _d, _n in ordered(names)] == [2, 1]
    found = latest(store)
    assert found is not None and same(found[0], sample(2))
    store.delete(ordered(names)[0][2])
    assert [r for r, _d, _n in ordered(store.names())] == [1]


def test_torn_newest_checkpoint_is_skipped(tmp_path):
    store = LocalStore(tmp_path)
    for number in (1, 2):
        data, digest = encode(sample(number))
        store.put(name_of(number, digest), data)
    newest = tmp_path / ordered(store.names())[0][2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn mid-write
    found = latest(store)
    assert found is not None and found[0].round == 1


def test_local_store_leaves_no_partial_file(tmp_path):
    store = LocalStore(tmp_path)
    data, digest = encode(sample(1))
    store.put(name_of(1, digest), data)
    assert [p.name for p in tmp_path.iterdir()] == [name_of(1, digest)]


class SlowStore(LocalStore):
    """A local store whose writes wait for the test's go."""

    def __init__(self, folder):
        super().__init__(folder)
        self.go = threading.Event()
        self.writes: list[str] = []

    def put(self, name, data):
        self.go.wait(30)
        self.writes.append(name)
        super().put(name, data)


def test_writer_coalesces_and_keeps_the_newest(tmp_path):
    store = SlowStore(tmp_path)
    saved: list[tuple[int, str]] = []
    writer = CheckpointWriter(store, keep=2, on_saved=lambda r, d: saved.append((r, d)))
    writer.submit(sample(1))
    wait_until(lambda: writer._busy, timeout=10, message="the writer did not take round 1")
    for number in range(2, 6):  # rounds faster than writes: only the newest waits
        writer.submit(sample(number))
    store.go.set()
    assert writer.flush(30)
    writer.close(30)
    assert [r for r, _d in saved] == [1, 5]
    assert [r for r, _d, _n in ordered(store.names())] == [5, 1]
    found = latest(store)
    assert found is not None and found[1] == saved[-1][1]


def test_writer_waits_the_interval_unless_flushed(tmp_path):
    store = LocalStore(tmp_path)
    saved: list[int] = []
    writer = CheckpointWriter(store, keep=5, interval=3600, on_saved=lambda r, d: saved.append(r))
    writer.submit(sample(1))  # the first write starts at once
    wait_until(lambda: saved == [1], timeout=10, message="round 1 was not written")
    for number in range(2, 5):
        writer.submit(sample(number))
    assert saved == [1]  # within the interval: rounds 2..4 wait, coalesced
    assert writer.flush(30)
    writer.close(30)
    assert saved == [1, 4]


def test_writer_keeps_at_most_k(tmp_path):
    store = LocalStore(tmp_path)
    writer = CheckpointWriter(store, keep=2)
    for number in range(1, 5):
        writer.submit(sample(number))
        assert writer.flush(30)
    writer.close(30)
    assert [r for r, _d, _n in ordered(store.names())] == [4, 3]


@pytest.mark.parametrize("name,attrs", [("FedAdam", ("m_t", "v_t")), ("FedYogi", ("m_t", "v_t")), ("FedAdagrad", ("m_t", "v_t")), ("FedAvgM", ("momentum_vector",))])
def test_strategy_state_round_trip(name, attrs):
    strategy = strategy_class(name)()
    for attr in attrs:
        setattr(strategy, attr, {"w": np.arange(3.0)} if attr != "momentum_vector" else [np.arange(3.0)])
    checkpoint = Checkpoint(round=1, parameters=[np.zeros(1)], strategy=strategy_state(strategy))
    fresh = strategy_class(name)()
    assert restore_strategy(fresh, decode(encode(checkpoint)[0]).strategy) is None
    for attr in attrs:
        value = getattr(fresh, attr)
        got = value["w"] if isinstance(value, dict) else value[0]
        assert np.array_equal(got, np.arange(3.0))


def test_unknown_strategy_state_is_reported():
    custom = type("MyStrategy", (), {})()
    assert "MyStrategy keeps state Ember does not checkpoint" in (restore_strategy(custom, {}) or "")
