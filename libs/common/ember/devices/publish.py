"""Send readings to a node: batched JSON over MQTT, or Arrow tables over Flight `do_put`.

MQTT: each message is an Ember envelope on `ember/v1/data/{tag}` at QoS 1,

    {"id": <uuid4 hex>, "type": "SensorReadings", "time": <ISO 8601>, "source": "device/<id>",
     "subject": <tag>, "data": {"readings": [<reading>, ...]}, "v": 1}

and a reading is a row of `ember.devices.sensors.READING_SCHEMA` as a JSON object. At most
`max_in_flight` publishes wait for their PUBACK at once; `send` blocks when that many are
pending, so a fast producer never piles up tasks.

    async with MqttPublisher("127.0.0.1", 1883, tag="line-1") as pub:
        await pub.send("edge-a-m000", readings)
    pub.published   # readings acknowledged by the broker

Flight: `put_table(table, tag, "grpc://host:8815", token)` uploads one table as one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from typing import Any

import aiomqtt
import pyarrow as pa
import pyarrow.flight as flight

from ember import topics
from ember.envelope import Envelope

READINGS_TYPE = "SensorReadings"
DEFAULT_TOPIC_ROOT = "ember/v1"


def readings_envelope(device: str, tag: str, readings: list[dict[str, Any]]) -> Envelope:
    """The envelope that carries a batch of one device's readings."""
    return Envelope(type=READINGS_TYPE, source=f"device/{device}", subject=tag, data={"readings": readings})


class MqttPublisher:
    """One aiomqtt connection publishing reading batches with bounded concurrency.

    An async context manager: on exit it waits for every pending PUBACK (an error in any
    publish is re-raised there). `published` counts acknowledged readings, `messages` the
    acknowledged messages.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tag: str,
        *,
        max_in_flight: int = 100,
        topic_root: str = DEFAULT_TOPIC_ROOT,
        identifier: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.topic = topics.DATA.format(topic_root, tag=tag)
        self.tag = tag
        self.published = 0
        self.messages = 0
        self._limit = asyncio.Semaphore(max_in_flight)
        self._timeout = timeout
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=identifier or f"ember-devices-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=max_in_flight,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            timeout=timeout,
        )
        self._client.pending_calls_threshold = max_in_flight + 1  # the bound is ours; no warnings
        self._stack = contextlib.AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> MqttPublisher:
        await self._stack.enter_async_context(self._client)
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._tasks = None
        await self._stack.__aexit__(*exc)  # TaskGroup drains first, then the client disconnects

    async def send(self, device: str, readings: list[dict[str, Any]]) -> str:
        """Queue one message with `readings` from `device`; returns the envelope id.

        Waits while `max_in_flight` publishes are unacknowledged.
        """
        if self._tasks is None:
            raise RuntimeError("MqttPublisher.send outside 'async with'")
        envelope = readings_envelope(device, self.tag, readings)
        payload = envelope.to_bytes()
        await self._limit.acquire()
        try:
            self._tasks.create_task(self._publish(payload, len(readings)))
        except BaseException:
            self._limit.release()
            raise
        return envelope.id

    async def _publish(self, payload: bytes, count: int) -> None:
        try:
            await self._client.publish(self.topic, payload, qos=1, timeout=self._timeout)
            self.published += count
            self.messages += 1
        finally:
            self._limit.release()


def bearer_options(token: str | None, timeout: float | None = None) -> flight.FlightCallOptions:
    """Flight call options carrying `authorization: Bearer <token>` (no header without a token)."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=timeout)


def put_table(
    table: pa.Table,
    tag: str,
    url: str,
    token: str | None = None,
    *,
    client: flight.FlightClient | None = None,
    max_chunksize: int = 65_536,
) -> int:
    """Upload `table` to the mldata Flight server at `url` (`grpc://host:port`) as one
    partition of `tag`; returns the rows sent. Raises the server's Flight error (for
    instance `FlightUnauthenticatedError`, or a schema mismatch) unchanged."""
    own = client is None
    client = client or flight.FlightClient(url)
    try:
        descriptor = flight.FlightDescriptor.for_path(tag)
        writer, _reader = client.do_put(descriptor, table.schema, options=bearer_options(token))
        writer.write_table(table, max_chunksize=max_chunksize)
        writer.close()
        return table.num_rows
    finally:
        if own:
            client.close()
