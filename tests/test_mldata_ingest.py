"""MQTT ingestion: the transport-free Ingestor, then a real Mosquitto and a real MldataService."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import aiomqtt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ember.devices.publish import MqttPublisher, readings_envelope
from ember.devices.sensors import generate_table, readings_of
from ember.datasummary import DataSummary
from ember.envelope import Envelope
from ember.mldata.app import MldataService
from ember.data.client import MldataClient, load_table
from ember.mldata.ingest import Ingestor, readings_table
from ember.mldata.settings import MldataSettings
from ember.mldata.store import PartitionStore
from ember.testing import Broker, assert_eventually

pytestmark = pytest.mark.timeout(60)
TOKEN = "ingest-secret"


def envelope(readings: object) -> bytes:
    return Envelope(type="SensorReadings", source="device/d1", data={"readings": readings}).to_bytes()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ingestor_buffers_by_size_and_age_and_counts_malformed(tmp_path: Path) -> None:
    clock = FakeClock()
    with PartitionStore(tmp_path / "d") as store:
        ingestor = Ingestor(store, flush_rows=5, flush_seconds=10, clock=clock)
        assert ingestor.accept("t", envelope([{"ts": i, "v": 1.0} for i in range(3)])) is None
        batch = ingestor.accept("t", envelope([{"ts": 3, "v": 2.5}, {"ts": "2025-01-01T00:00:00Z", "v": 3}]))
        assert batch is not None and len(batch.rows) == 5 and batch.rows[-1]["ts"] == 1_735_689_600_000_000_000
        assert ingestor.flush(batch) is not None
        assert ingestor.accept("t", envelope({"ts": 9, "v": 1.0})) is None  # a single reading object
        assert ingestor.due() == []
        clock.now = 10.0
        [old] = ingestor.due()
        assert old.rows == [{"ts": 9, "v": 1.0}]
        for bad in [b"not json", b'{"type": "x"}', json.dumps({"type": "x", "data": {}}).encode(), envelope([]), envelope("nope")]:
            assert ingestor.accept("t", bad) is None
        assert ingestor.accept("bad tag", envelope([{"ts": 1}])) is None
        ingestor.accept("t", envelope([{"ts": 1.5}, {"v": 1}, {"ts": 2, "v": {"nested": 1}}, "str", {"ts": "yesterday"}, {"ts": 3, "v": 1}]))
        stats = ingestor.stats()
        assert stats["messages_malformed"] == 6 and stats["readings_malformed"] == 5
        assert stats["readings"] == 7 and stats["buffered"] == 1 and stats["malformed"] == 11
        assert [p.rows for p in store.partitions(["t"])] == [5]
        assert store.schema_of("t") == pa.schema([("ts", pa.int64()), ("v", pa.float64())])


def test_ingestor_keeps_only_its_own_nodes_readings(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "d") as store:
        ingestor = Ingestor(store, flush_rows=100, node="edge-a")
        ingestor.accept("t", envelope([{"ts": 1, "node": "edge-a"}, {"ts": 2, "node": "edge-b"}, {"ts": 3}]))
        [batch] = ingestor.take_all()
        assert [r["ts"] for r in batch.rows] == [1, 3]
        assert ingestor.stats()["readings_other_node"] == 1 and ingestor.stats()["malformed"] == 0


def test_flush_casts_to_the_tag_schema_and_drops_unfit_readings(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "d") as store:
        store.write_table("t", pa.table({"ts": pa.array([1], pa.int64()), "v": [1.0], "label": pa.array([None], pa.null())}))
        rows = [{"ts": 2, "v": 3}, {"ts": 3, "v": "hot"}, {"ts": 4, "v": 2.5, "label": "x", "extra": 1}, {"ts": 5}]
        table, dropped, ignored = readings_table(rows, store.schema_of("t"))
        assert dropped == 1 and ignored == ["extra"]
        assert table.column("v").to_pylist() == [3.0, 2.5, None] and table.column("label").to_pylist() == [None, "x", None]
        ingestor = Ingestor(store, flush_rows=100)
        ingestor.accept("t", envelope(rows))
        [batch] = ingestor.take_all()
        assert ingestor.flush(batch).partition.rows == 3
        assert ingestor.stats()["readings_unfit"] == 1 and ingestor.stats()["fields_ignored"] == 1


def settings_for(tmp_path: Path, broker: Broker, **overrides: object) -> MldataSettings:
    values = dict(
        home=tmp_path / "home", mqtt_url=broker.url, node_id="edge-a", mldata_port=0, mldata_host="127.0.0.1",
        mldata_data_dir=tmp_path / "data", mldata_token=TOKEN, mldata_flush_rows=30_000, mldata_flush_seconds=60,
    )  # fmt: skip
    values.update(overrides)
    return MldataSettings.from_env({}, **values)


async def publish_raw(broker: Broker, topic: str, payloads: list[bytes]) -> None:
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(broker.host, broker.port, socket_options=nodelay) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def test_100k_readings_over_mqtt_all_land_after_clean_shutdown(mqtt_broker: Broker, tmp_path: Path) -> None:
    tag = f"plant-{uuid.uuid4().hex[:6]}"
    table = generate_table("edge-a", devices=10, seconds=10_000, rate_hz=1.0, seed=3)
    rows = readings_of(table)
    assert len(rows) == 100_000
    extra = {**rows[0], "ts": 1}  # the one good reading inside a partly malformed message
    malformed = [b"\xff not json", b'{"type": "SensorReadings"}', readings_envelope("d", tag, []).to_bytes()]
    mixed = envelope([extra, {"device": "no-ts"}, {"ts": 2, "rpm": [1, 2]}])
    settings = settings_for(tmp_path, mqtt_broker)
    async with MldataService(settings) as service:
        await service.wait_ingesting()
        async with MqttPublisher(mqtt_broker.host, mqtt_broker.port, tag, max_in_flight=64) as publisher:
            for i in range(0, len(rows), 250):
                await publisher.send(rows[i]["device"], rows[i : i + 250])
        await publish_raw(mqtt_broker, f"ember/v1/data/{tag}", [*malformed, mixed])
        assert publisher.published == 100_000
        counters = service.ingestor.counters
        await assert_eventually(lambda: counters["messages"] == 404, timeout=30, message=f"not all messages arrived: {counters}")
        partitions_before_shutdown = sum(p.rows for p in service.store.partitions([tag]))
    stats = service.ingestor.stats()
    assert stats["readings"] == 100_001 and stats["rows_flushed"] == 100_001
    assert stats["messages_malformed"] == 3 and stats["readings_malformed"] == 2 and stats["buffered"] == 0
    assert partitions_before_shutdown < 100_001  # the clean shutdown flushed the rest
    assert DataSummary.read(settings.data_dir()).rows() == {tag: 100_001}
    with PartitionStore(settings.data_dir()) as store:
        stored = pa.concat_tables([pq.read_table(store.root / p.name) for p in store.partitions([tag])])
    assert stored.num_rows == 100_001
    got = stored.filter(pa.compute.not_equal(stored["ts"], 1)).sort_by([("ts", "ascending"), ("device", "ascending")])
    assert got.equals(table.sort_by([("ts", "ascending"), ("device", "ascending")]))


async def test_restart_receives_readings_queued_in_its_persistent_session(mqtt_broker: Broker, tmp_path: Path) -> None:
    tag = f"queued-{uuid.uuid4().hex[:6]}"
    rows = readings_of(generate_table("edge-b", devices=2, seconds=1_000, rate_hz=1.0, seed=5))
    settings = settings_for(tmp_path, mqtt_broker, mldata_flush_seconds=0.2, node_id="edge-b")
    async with MldataService(settings) as service:
        await service.wait_ingesting()
        async with MqttPublisher(mqtt_broker.host, mqtt_broker.port, tag) as publisher:
            await publisher.send("edge-b-m000", rows[:1000])
        # Flushed by age, without a shutdown.
        await assert_eventually(lambda: service.ingestor.counters["rows_flushed"] == 1000, timeout=20)
    async with MqttPublisher(mqtt_broker.host, mqtt_broker.port, tag) as publisher:  # mldata is down
        for i in range(1000, 2000, 100):
            await publisher.send("edge-b-m001", rows[i : i + 100])
    async with MldataService(settings) as service:
        await service.wait_ingesting()
        await assert_eventually(lambda: service.ingestor.counters["readings"] == 1000, timeout=20)
        await service.flush()
        loaded = load_table([tag], url=service.url, token=TOKEN, node="edge-b")
        with MldataClient(service.url, TOKEN) as client:
            assert client.stats()["rows_flushed"] == 1000
    assert loaded.num_rows == 2000 and loaded["ts"].to_pylist() == sorted(r["ts"] for r in rows)
