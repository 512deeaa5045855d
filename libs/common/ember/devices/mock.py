"""Run a fleet of mock edge devices against a node: the body of `ember devices mock`.

    count = asyncio.run(run_mock(devices=8, rate=10, duration=60, tag="line-1", node="edge-a",
                                 transport="mqtt", mqtt_url="mqtt://127.0.0.1:1883"))
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Literal

import pyarrow.flight as flight

from ember.devices.publish import DEFAULT_TOPIC_ROOT, MqttPublisher, put_table
from ember.devices.sensors import Fleet, readings_of
from ember.security.mqtt import MqttSecurity
from ember.settings import DEFAULT_MQTT_URL, mqtt_url_uses_tls, parse_mqtt_url

Transport = Literal["mqtt", "flight"]
DEFAULT_FLIGHT_URL = "grpc://127.0.0.1:8815"


async def run_mock(
    *,
    devices: int = 4,
    rate: float = 1.0,
    duration: float = 60.0,
    tag: str = "sensors",
    node: str = "node-0",
    transport: Transport = "mqtt",
    seed: int = 0,
    mqtt_url: str = DEFAULT_MQTT_URL,
    flight_url: str = DEFAULT_FLIGHT_URL,
    token: str | None = None,
    batch_size: int = 500,
    max_in_flight: int = 100,
    nominal_hz: float = 10.0,
    flush_seconds: float = 1.0,
    flight_rows: int = 500_000,
    start_ts: int | None = None,
    topic_root: str = DEFAULT_TOPIC_ROOT,
    security: MqttSecurity | None = None,
) -> int:
    """Simulate `devices` machines of node `node` and send their readings under data tag `tag`;
    returns the number of readings the broker (QoS 1 PUBACK) or Flight server accepted.

    CLI mapping (`ember devices mock`): `--devices N --rate R --duration S --tag T --node N
    --transport mqtt|flight --seed S --mqtt-url URL --flight-url URL --token T`; the rest are
    tuning knobs with sensible defaults. `security`: the MQTT credentials (the node's device
    fleet under an ACL; default from the environment).

    - `rate` > 0: live mode. Each device produces `rate` readings/s for `duration` s of wall
      time, timestamps start now (`start_ts` overrides, int ns), and a reading is sent only
      after its timestamp has passed. MQTT sends one message per device every
      `flush_seconds` (at most `batch_size` readings); Flight sends one `do_put` (one
      partition) per `max(flush_seconds, 10)` s.
    - `rate` == 0: replay as fast as possible. `duration` s of history sampled at
      `nominal_hz` (timestamps end now unless `start_ts` is given): `devices * duration *
      nominal_hz` readings. MQTT messages carry `batch_size` readings of one device; Flight
      puts carry up to `flight_rows` rows each.

    MQTT: topic `<topic_root>/data/<tag>`, QoS 1, at most `max_in_flight` unacknowledged
    publishes. Flight: `do_put` to `flight_url` (`grpc://host:port`) with `authorization:
    Bearer <token>`. Readings are deterministic for `(node, devices, seed)` apart from `ts`.
    """
    if rate < 0 or duration < 0 or devices < 1 or batch_size < 1:
        raise ValueError("need devices >= 1, batch_size >= 1, rate >= 0 and duration >= 0")
    paced = rate > 0
    hz = rate if paced else nominal_hz
    now = time.time_ns()
    if start_ts is None:
        start_ts = now if paced else now - int(duration * 1e9)
    fleet = Fleet(node, devices, duration, hz, seed, start_ts)
    if transport == "mqtt":
        ticks = max(1, min(batch_size, math.ceil(hz * flush_seconds))) if paced else batch_size
        return await _run_mqtt(fleet, ticks, paced, tag, mqtt_url, max_in_flight, topic_root, security)
    if transport == "flight":
        ticks = math.ceil(hz * max(flush_seconds, 10.0)) if paced else max(1, flight_rows // devices)
        return await _run_flight(fleet, ticks, paced, tag, flight_url, token)
    raise ValueError(f"unknown transport {transport!r} (use 'mqtt' or 'flight')")


async def _pace(fleet: Fleet, t0: float) -> None:
    """Sleep until the readings produced so far have all been 'measured' (live mode)."""
    delay = t0 + fleet.pos / fleet.rate_hz - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_mqtt(
    fleet: Fleet, ticks: int, paced: bool, tag: str, url: str, max_in_flight: int, root: str, security: MqttSecurity | None
) -> int:
    host, port = parse_mqtt_url(url)
    n_dev = len(fleet.devices)
    t0 = asyncio.get_running_loop().time()
    tls = mqtt_url_uses_tls(url)
    async with MqttPublisher(host, port, tag, max_in_flight=max_in_flight, topic_root=root, security=security, tls=tls) as publisher:
        for table in fleet.tables(ticks):
            if paced:
                await _pace(fleet, t0)
            rows = readings_of(table)
            for j, device in enumerate(fleet.devices):
                await publisher.send(device, rows[j::n_dev])
    return publisher.published


async def _run_flight(fleet: Fleet, ticks: int, paced: bool, tag: str, url: str, token: str | None) -> int:
    client = flight.FlightClient(url)
    sent = 0
    t0 = asyncio.get_running_loop().time()
    try:
        for table in fleet.tables(ticks):
            if paced:
                await _pace(fleet, t0)
            sent += await asyncio.to_thread(put_table, table, tag, url, token, client=client)
    finally:
        client.close()
    return sent
