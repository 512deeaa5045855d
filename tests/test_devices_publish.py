"""Mock devices on the wire: MQTT against a real Mosquitto, Flight against a real Flight server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Iterator

import aiomqtt
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from ember.devices.mock import run_mock
from ember.devices.publish import MqttPublisher, put_table
from ember.devices.sensors import generate_table, readings_of
from ember.testing import Broker

pytestmark = pytest.mark.timeout(30)


def _tag() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def _collect(broker: Broker, topic: str, expected: int, started: asyncio.Event, timeout: float = 20.0) -> list[dict]:
    """Subscribe, signal `started`, then gather envelopes until `expected` readings arrived."""
    envelopes: list[dict] = []
    received = 0
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    ) as client:
        await client.subscribe(topic, qos=1)
        started.set()
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                envelope = json.loads(message.payload)
                envelopes.append(envelope)
                received += len(envelope["data"]["readings"])
                if received >= expected:
                    break
    return envelopes


async def test_publisher_delivers_every_batch_exactly(mqtt_broker: Broker) -> None:
    tag = _tag()
    table = generate_table("edge-a", devices=5, seconds=1000, rate_hz=1.0, seed=1)
    rows = readings_of(table)
    started = asyncio.Event()
    collector = asyncio.create_task(_collect(mqtt_broker, f"ember/v1/data/{tag}", len(rows), started))
    await asyncio.wait_for(started.wait(), 10)
    sent_ids = []
    async with MqttPublisher(mqtt_broker.host, mqtt_broker.port, tag, max_in_flight=8) as publisher:
        for i in range(0, len(rows), 50):
            sent_ids.append(await publisher.send("edge-a-m000", rows[i : i + 50]))
    assert publisher.published == 5000 and publisher.messages == 100
    envelopes = await collector
    assert sorted(e["id"] for e in envelopes) == sorted(sent_ids)
    received = [r for e in envelopes for r in e["data"]["readings"]]
    assert len(received) == 5000
    assert sorted(received, key=lambda r: (r["ts"], r["device"])) == rows
    first = envelopes[0]
    assert first["type"] == "SensorReadings" and first["subject"] == tag and first["v"] == 1
    assert first["source"] == "device/edge-a-m000"


async def test_run_mock_over_mqtt_as_fast_as_possible(mqtt_broker: Broker) -> None:
    tag = _tag()
    started = asyncio.Event()
    collector = asyncio.create_task(_collect(mqtt_broker, f"ember/v1/data/{tag}", 5000, started))
    await asyncio.wait_for(started.wait(), 10)
    count = await run_mock(
        devices=5, rate=0, duration=100, nominal_hz=10, tag=tag, node="edge-c", seed=7,
        mqtt_url=mqtt_broker.url, batch_size=200, start_ts=10**18,
    )  # fmt: skip
    assert count == 5000
    envelopes = await collector
    assert len({e["id"] for e in envelopes}) == len(envelopes) == 25  # 1000 ticks / 200 per device
    assert {e["source"] for e in envelopes} == {f"device/edge-c-m00{i}" for i in range(5)}
    received = sorted((r for e in envelopes for r in e["data"]["readings"]), key=lambda r: (r["ts"], r["device"]))
    assert received == readings_of(generate_table("edge-c", 5, 100, 10.0, seed=7, start_ts=10**18))


async def test_run_mock_paces_live_readings(mqtt_broker: Broker) -> None:
    tag = _tag()
    started = asyncio.Event()
    collector = asyncio.create_task(_collect(mqtt_broker, f"ember/v1/data/{tag}", 40, started))
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    count = await run_mock(devices=2, rate=20, duration=1.0, tag=tag, node="edge-a", mqtt_url=mqtt_broker.url, flush_seconds=0.25)
    elapsed = loop.time() - t0
    assert count == 40
    assert 0.9 <= elapsed < 5.0
    envelopes = await collector
    assert len(envelopes) == 8  # 2 devices x 4 flushes of 5 readings


class _RecordingServer(flight.FlightServerBase):
    """A minimal Flight server that checks the bearer token and keeps every put."""

    def __init__(self, token: str) -> None:
        super().__init__("grpc://127.0.0.1:0", middleware={"auth": _AuthFactory(token)})
        self.puts: list[tuple[str, pa.Table]] = []
        self._lock = threading.Lock()

    def do_put(self, context, descriptor, reader, writer):  # type: ignore[no-untyped-def]
        table = reader.read_all()
        with self._lock:
            self.puts.append((descriptor.path[0].decode(), table))


class _AuthFactory(flight.ServerMiddlewareFactory):
    def __init__(self, token: str) -> None:
        self.token = token

    def start_call(self, info, headers):  # type: ignore[no-untyped-def]
        if headers.get("authorization") != [f"Bearer {self.token}"]:
            raise flight.FlightUnauthenticatedError("bad token")
        return None


@pytest.fixture
def flight_server() -> Iterator[_RecordingServer]:
    server = _RecordingServer("s3cret")
    try:
        yield server
    finally:
        server.shutdown()


def test_put_table_sends_tag_token_and_rows(flight_server: _RecordingServer) -> None:
    url = f"grpc://127.0.0.1:{flight_server.port}"
    table = generate_table("edge-a", 3, 500, 2.0, seed=1)
    assert put_table(table, "line-1", url, "s3cret", max_chunksize=1000) == 3000
    [(tag, got)] = flight_server.puts
    assert tag == "line-1" and got.equals(table)
    with pytest.raises(flight.FlightUnauthenticatedError):
        put_table(table, "line-1", url, "wrong")


async def test_run_mock_over_flight(flight_server: _RecordingServer) -> None:
    url = f"grpc://127.0.0.1:{flight_server.port}"
    count = await run_mock(
        devices=4, rate=0, duration=1000, nominal_hz=10, tag="line-2", node="edge-b", seed=3,
        transport="flight", flight_url=url, token="s3cret", flight_rows=12_000, start_ts=10**18,
    )  # fmt: skip
    assert count == 40_000
    assert [t.num_rows for _, t in flight_server.puts] == [12_000, 12_000, 12_000, 4_000]
    merged = pa.concat_tables(t for _, t in flight_server.puts)
    assert merged.equals(generate_table("edge-b", 4, 1000, 10.0, seed=3, start_ts=10**18))
