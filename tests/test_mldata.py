"""mldata over real Arrow Flight: put/get, dedup, concurrency, schema, auth, loader, actions,
and `kill -9` of a real mldata process during a large put."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from ember.datasummary import DataSummary
from ember.errors import InvalidRequest
from ember.data.auth import bearer_headers
from ember.data.client import MldataClient, load_table
from ember.data.errors import InvalidTag, NoDataError, SchemaMismatch
from ember.mldata.names import PARTITION_RE, TMP_PREFIX
from ember.mldata.server import MldataFlightServer
from ember.mldata.store import PartitionStore
from ember.mldata.summary import write_summary
from ember.testing import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.timeout(60)
TOKEN = "node-secret"


@dataclass
class Node:
    url: str
    store: PartitionStore
    server: MldataFlightServer

    def client(self, token: str = TOKEN) -> MldataClient:
        return MldataClient(self.url, token)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    store = PartitionStore(tmp_path / "data", on_change=lambda s: write_summary(s, "n1")).open()
    server = MldataFlightServer(store, location="grpc://127.0.0.1:0", token=TOKEN, batch_size=65_536)
    yield Node(f"grpc://127.0.0.1:{server.port}", store, server)
    server.shutdown()
    store.close()


def readings(n: int, *, seed: int = 0, start: int = 0, device: str | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = (1_735_689_600_000_000 + np.arange(start, start + n, dtype=np.int64) * 1000).astype("datetime64[us]")
    temperature = rng.normal(50, 5, n)
    mask = rng.random(n) < 0.01
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "device": pa.array([device] * n if device else rng.integers(0, 50, n).astype(str)),
            "temperature_c": pa.array(temperature, mask=mask),
            "rpm": rng.integers(0, 3000, n),
            "fault": rng.random(n) < 0.05,
        }
    )


def partition_files(store: PartitionStore) -> list[str]:
    return sorted(p for p in os.listdir(store.root) if PARTITION_RE.match(p))


def test_million_rows_round_trip_exactly(node: Node) -> None:
    table = readings(1_000_000)
    with node.client() as client:
        reply = client.push("plant", table)
        assert reply["rows"] == 1_000_000 and not reply["duplicate"]
        [info] = client.partitions(["plant"])
        assert info.total_records == 1_000_000 and info.schema.equals(table.schema)
        reader = flight.connect(node.url).do_get(info.endpoints[0].ticket, flight.FlightCallOptions(headers=bearer_headers(TOKEN)))
        batches = [chunk.data for chunk in reader]
    assert len(batches) > 1  # streamed, not one blob
    assert pa.Table.from_batches(batches).equals(table)


def test_identical_upload_stored_once(node: Node) -> None:
    table = readings(10_000)
    with node.client() as client:
        first, second = client.push("dup", table), client.push("dup", table)
        assert second == {**first, "duplicate": True}
        assert len(client.partitions(["dup"])) == 1
    assert partition_files(node.store) == [first["partition"]]
    assert first["partition"].startswith("dup.") and len(first["partition"].split(".")[1]) == 64


def test_eight_concurrent_putters_all_land_uncorrupted(node: Node) -> None:
    tables = [readings(60_000, seed=i, start=i * 60_000, device=f"dev-{i}") for i in range(8)]
    barrier = threading.Barrier(8)

    def put(table: pa.Table) -> str:
        with node.client() as client:
            barrier.wait(10)
            return client.push("shared", table, batch_rows=5_000)["partition"]

    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(put, tables))
    assert len(set(names)) == 8
    assert partition_files(node.store) == sorted(names)
    assert not [p for p in os.listdir(node.store.root) if p.startswith(TMP_PREFIX)]
    with node.client() as client:
        for name, table in zip(names, tables, strict=True):
            assert client.read(name).equals(table)
            assert pq.read_table(node.store.root / name).equals(table)


def test_incompatible_schema_is_refused_naming_columns(node: Node) -> None:
    with node.client() as client:
        client.push("typed", readings(100))
        bad = readings(100).drop_columns(["fault"]).set_column(2, "temperature_c", pa.array(["hot"] * 100)).append_column("humidity", pa.array([1.0] * 100))
        with pytest.raises(SchemaMismatch) as caught:
            client.push("typed", bad)
    message = str(caught.value)
    assert "missing columns ['fault']" in message and "unexpected columns ['humidity']" in message
    assert "'temperature_c' is string, the tag has double" in message
    # The same refusal as a plain Flight error for any Flight client.
    raw = flight.connect(node.url)
    with pytest.raises(flight.FlightServerError, match="temperature_c"):
        writer, _ = raw.do_put(flight.FlightDescriptor.for_path("typed"), bad.schema, flight.FlightCallOptions(headers=bearer_headers(TOKEN)))
        writer.write_table(bad)
        writer.close()
    assert len(partition_files(node.store)) == 1


def test_compatible_reordered_columns_are_accepted(node: Node) -> None:
    with node.client() as client:
        client.push("order", readings(100))
        table = readings(100, seed=3)
        client.push("order", table.select(list(reversed(table.column_names))))
        assert len(client.partitions(["order"])) == 2


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_calls_without_the_right_token_are_unauthenticated(node: Node, token: str | None) -> None:
    raw = flight.connect(node.url)
    options = flight.FlightCallOptions(headers=bearer_headers(token) if token is not None else [])
    with node.client() as client:
        name = client.push("secret", readings(10))["partition"]
    calls = [
        lambda: list(raw.list_flights(b"", options)),
        lambda: raw.do_get(flight.Ticket(name), options).read_all(),
        lambda: list(raw.do_action(flight.Action("tags", b""), options)),
        lambda: list(raw.do_action(flight.Action("drop", json.dumps({"tag": "secret"}).encode()), options)),
        lambda: raw.get_flight_info(flight.FlightDescriptor.for_path("secret", name), options),
    ]
    for call in calls:
        with pytest.raises(flight.FlightUnauthenticatedError):
            call()
    with pytest.raises(flight.FlightUnauthenticatedError):
        writer, _ = raw.do_put(flight.FlightDescriptor.for_path("secret"), readings(10).schema, options)
        writer.write_table(readings(10, seed=9))
        writer.close()
    assert partition_files(node.store) == [name]


def test_invalid_tags_are_refused(node: Node) -> None:
    with node.client() as client:
        for tag in ["../etc", "a/b", "", ".hidden", "x" * 200, "sp ace"]:
            with pytest.raises(InvalidTag):
                client.push(tag, readings(5))
        with pytest.raises(InvalidTag):
            client.read("../../etc/passwd")
    assert partition_files(node.store) == []


def test_loader_equals_reading_partitions_directly(node: Node) -> None:
    with node.client() as client:
        # Interleaved time ranges, and tag "b" has an extra column: the loader unifies.
        client.push("a", readings(30_000, seed=1, start=0))
        client.push("a", readings(30_000, seed=2, start=15_000))
        client.push("b", readings(20_000, seed=3, start=5_000).append_column("label", pa.array(["x"] * 20_000)))
        client.push("other", readings(10, seed=4))
    loaded = load_table(["a", "b"], url=node.url, token=TOKEN, node="n1")
    files = [node.store.root / p.name for p in node.store.partitions(["a", "b"])]
    direct = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive").sort_by("ts")
    assert loaded.num_rows == 80_000
    assert loaded.equals(direct)
    unsorted = load_table(["a"], url=node.url, token=TOKEN, node="n1", sort_by=None, parallel=1)
    assert unsorted.num_rows == 60_000 and unsorted.schema.equals(readings(1).schema)


def test_loader_with_no_matching_data_names_tags_and_node(node: Node) -> None:
    with pytest.raises(NoDataError, match=r"no data for tags \['nothing', 'here'\] on node edge-7"):
        load_table(["nothing", "here"], url=node.url, token=TOKEN, node="edge-7")


def test_listing_tags_drop_and_summary(node: Node) -> None:
    with node.client() as client:
        a1 = client.push("a", readings(1_000, start=0))["partition"]
        client.push("a", readings(500, seed=1, start=5_000))
        client.push("b", readings(200, seed=2).drop_columns(["ts"]))
        assert len(client.partitions()) == 3
        assert len(client.partitions([])) == 0
        assert {i.descriptor.path[0] for i in client.partitions(["b"])} == {b"b"}
        stats = {t["tag"]: t for t in client.tags()}
        assert stats["a"]["partitions"] == 2 and stats["a"]["rows"] == 1_500
        assert stats["a"]["first_ts"] == "2025-01-01T00:00:00+00:00"
        assert stats["a"]["last_ts"] == "2025-01-01T00:00:05.499000+00:00"
        assert stats["b"]["first_ts"] is None and stats["b"]["bytes"] > 0
        summary = DataSummary.read(node.store.root)  # what the node's flamelet announces
        assert summary.rows() == {"a": 1_500, "b": 200} and summary.node == "n1"
        assert summary.tags["a"].partitions == 2 and summary.tags["a"].first_ts == "2025-01-01T00:00:00+00:00"

        assert client.drop(partition=a1) == [a1]
        assert DataSummary.read(node.store.root).rows() == {"a": 500, "b": 200}
        assert len(client.drop(tag="b")) == 1
        assert DataSummary.read(node.store.root).rows() == {"a": 500}
        # Dropping a whole tag frees its schema: a new first partition fixes a new one.
        client.push("b", pa.table({"other": [1, 2, 3]}))
        with pytest.raises(InvalidRequest, match="unknown action"):
            client._action("explode")


def test_restart_reloads_catalogue_and_schema(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "d") as store:
        name = store.write_table("t", readings(100)).partition.name
        (store.root / f"{TMP_PREFIX}t.leftover").write_bytes(b"PAR1 partial")
    with PartitionStore(tmp_path / "d") as store:
        assert [p.name for p in store.partitions()] == [name]
        assert not [p for p in os.listdir(store.root) if p.startswith(TMP_PREFIX)]
        with pytest.raises(SchemaMismatch):
            store.write_table("t", pa.table({"x": [1]}))

def test_serving_copy_is_streamed_and_never_trusted_over_the_parquet(tmp_path: Path) -> None:
    table = readings(300_000)
    with PartitionStore(tmp_path / "d") as store:
        name = store.write_table("t", table).partition.name
        copy = store.serving.path(name)
        wait_until(copy.exists, message="no serving copy was written")
        schema, batches = store.iter_batches(name)
        streamed = list(batches)
        assert len(streamed) > 1 and pa.Table.from_batches(streamed, schema).equals(table)
        del streamed, batches  # they map the copy, which is cut short in place below
        copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])  # torn (a crash before the data hit disk)
        schema, batches = store.iter_batches(name)
        assert pa.Table.from_batches(list(batches), schema).equals(table)  # from the Parquet file
        assert not copy.exists()
    with PartitionStore(tmp_path / "d") as store:  # a restart writes the missing copy again
        wait_until(copy.exists, message="the serving copy was not rewritten at start-up")
        (store.serving.dir / f"{TMP_PREFIX}orphan.arrow").write_bytes(b"partial")
        store.drop(name=name)
        assert not copy.exists()
    with PartitionStore(tmp_path / "d") as store:
        assert os.listdir(store.serving.dir) == []  # unfinished copies are swept
    with PartitionStore(tmp_path / "e", serving_copies=False) as store:
        name = store.write_table("t", table).partition.name
        schema, batches = store.iter_batches(name)
        assert pa.Table.from_batches(list(batches), schema).equals(table)
        assert not (store.root / "serving").exists()


def start_mldata(data: Path, port: int, home: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ember.mldata", "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--data-dir", str(data), "--token", TOKEN, "--node", "crash-node", "--no-ingest"]
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_LOG_FORMAT": "json"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "mldata.log", "ab"))
    wait_for_port("127.0.0.1", port, timeout=20, process=proc)
    return proc


def incoming(data: Path) -> list[Path]:
    return [data / n for n in os.listdir(data) if n.startswith(TMP_PREFIX)]


def partitions(data: Path) -> set[str]:
    return {n for n in os.listdir(data) if PARTITION_RE.match(n)}


def test_kill_9_during_put_leaves_no_partial_partition(tmp_path: Path) -> None:
    data, home, port = tmp_path / "data", tmp_path / "home", free_port()
    home.mkdir()
    earlier = {f"e{i}": readings(50_000, seed=i, start=i * 50_000) for i in range(2)}
    proc = start_mldata(data, port, home)
    try:
        url = f"grpc://127.0.0.1:{port}"
        with MldataClient(url, TOKEN) as client:
            names = {client.push("plant", table)["partition"]: table for table in earlier.values()}
        killed = threading.Event()
        failure: list[BaseException] = []

        def batches() -> Iterator[pa.RecordBatch]:
            for i in range(40):  # 2.6M rows: the server has flushed row groups to its temp file
                yield from readings(65_536, seed=100 + i, start=i * 65_536).to_batches()
            killed.wait(30)
            yield from readings(65_536, seed=999).to_batches()

        def big_put() -> None:
            try:
                with MldataClient(url, TOKEN) as client:
                    client.push("plant", pa.RecordBatchReader.from_batches(readings(1).schema, batches()))
            except BaseException as exc:  # the server dies under it
                failure.append(exc)

        putter = threading.Thread(target=big_put)
        putter.start()
        wait_until(lambda: any(p.stat().st_size > 1_000_000 for p in incoming(data)), timeout=30, message="no partial upload on disk")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed.set()
        putter.join(30)
        assert failure, "the put must fail when the server is killed"
        assert partitions(data) == set(names)  # the partial upload is not a partition
        assert incoming(data)  # ... it is only a hidden temp file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc = start_mldata(data, port, home)
    try:
        with MldataClient(url, TOKEN) as client:
            listed = {info.endpoints[0].ticket.ticket.decode() for info in client.partitions(["plant"])}
            assert listed == set(names)
            for name, table in names.items():
                assert client.read(name).equals(table)
            assert not incoming(data)  # swept at start-up
            assert client.push("plant", readings(10, seed=7))["rows"] == 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
