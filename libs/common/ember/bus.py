"""The MQTT bus: one class owns the connection (aiomqtt, MQTT 5, QoS 1).

- Handlers are registered declaratively before `start` (`subscribe`, `serve`); every (re)connect
  re-subscribes them, so nothing else in a service knows the broker went away.
- Reconnects happen here only, with capped jittered backoff.
- Inbound messages are bounded: a topic parameter that is not a short id, a payload that is not a
  valid envelope, or (inside `ember.envelope.inbound`) data that does not fit its model is dropped
  with one warning line and counted (`stats["dropped_invalid"]`). Any other error a handler raises
  is a bug: logged with its traceback and counted (`stats["handler_errors"]`). The service keeps
  serving either way.
- Requests (`ember.actions`) use MQTT 5 response topic + correlation data; the reply carries the
  action's reply model or a typed error, also for a request that is invalid or names an unknown
  action (`ember.rpc` answers them).
- Outgoing packets are written at once on the event loop's thread (`ember.mqtt_compat.write_eagerly`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from ember import topics
from ember.actions import Action, Payload
from ember.envelope import MAX_REPLY_BYTES, DecodeError, Envelope, decode
from ember.errors import EmberError, RequestTimeout, Unavailable, from_reply
from ember.log import get_logger
from ember.mqtt_compat import write_eagerly
from ember.rpc import RequestHandler, Responder
from ember.security.mqtt import MqttSecurity
from ember.settings import Settings, parse_mqtt_url

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
R = TypeVar("R", bound=Payload)


@dataclass(frozen=True)
class Message:
    """A received message: its topic, template parameters and (when decoded) its envelope."""

    topic: str
    params: dict[str, str]
    payload: bytes
    retain: bool
    envelope: Envelope | None = None
    properties: Any = None

    @property
    def body(self) -> Envelope:
        """The envelope (every message of a non-raw subscription has one)."""
        if self.envelope is None:
            raise RuntimeError(f"a message of a raw subscription has no envelope ({self.topic[:200]})")
        return self.envelope


Handler = Callable[[Message], Awaitable[None]]


@dataclass
class _Subscription:
    template: topics.TopicTemplate
    filter: str
    handler: Handler
    raw: bool
    concurrent: bool
    fixed: dict[str, str] = field(default_factory=dict)
    checks_own_params: bool = False
    """The handler bounds the topic parameters itself (requests, to reply when they are not)."""


class Bus:
    """Owns one MQTT connection. Use as `async with Bus(...) as bus:`.

    `client_id` must be stable for a service with a persistent session (`clean_start=False`):
    the broker then queues QoS 1 messages while the service is away.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        root: str = "ember/v1",
        persistent: bool = False,
        session_expiry: int = 3600,
        keepalive: int = 5,
        will: tuple[str, bytes, bool] | None = None,
        max_concurrency: int = 64,
        max_background: int = 100,
        source: str = "",
        on_connect: Callable[[Bus], Awaitable[None]] | None = None,
        security: MqttSecurity | None = None,
        outage: float | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        # security: username, password and TLS (for mqtts:// URLs); default from EMBER_IDENTITY / EMBER_MQTT_*.
        self.security = security if security is not None else MqttSecurity.from_env()
        self.outage = Settings.from_env().broker_outage if outage is None else outage
        """Seconds a publish without an explicit timeout waits for a lost connection to come back."""
        self.url = url
        self.client_id = client_id or f"ember-{uuid.uuid4().hex[:12]}"
        self.root = root
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.will = will
        self.source = source or self.client_id
        self.stats: Counter[str] = Counter()
        self._on_connect = on_connect
        self._subs: list[_Subscription] = []
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._pending: dict[bytes, asyncio.Future[Envelope]] = {}
        self._limit = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsent: list[str] = []
        """Filters registered while connected, not subscribed yet (see `_subscribe_unsent`)."""
        self._background_slots = asyncio.Semaphore(max_background)
        self._background: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._responder: Responder | None = None
        self.log = get_logger("ember.bus", client=self.client_id)
        self._reply_topic = topics.REPLY.format(root, client=self.client_id)

    # --- registration ----------------------------------------------------------------------
    def subscribe(
        self,
        template: topics.TopicTemplate,
        handler: Handler,
        *,
        raw: bool = False,
        concurrent: bool = False,
        **fixed: str,
    ) -> None:
        """Call `handler` for every message matching `template` (parameters in `fixed` pinned).

        `raw=True` skips envelope decoding (e.g. Flower frames). `concurrent=True` runs the
        handler as a bounded task instead of in arrival order.
        """
        self._register(_Subscription(template, template.wildcard(self.root, **fixed), handler, raw, concurrent, fixed))

    def _register(self, sub: _Subscription) -> None:
        self._subs.append(sub)
        if self._client is not None and self._connected.is_set():
            self._unsent.append(sub.filter)
            if len(self._unsent) == 1:
                task = asyncio.get_running_loop().create_task(self._subscribe_unsent())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _subscribe_unsent(self) -> None:
        """Subscribe what was registered while connected in one SUBSCRIBE: a caller may register
        dozens of topics in a row, and aiomqtt warns above ten concurrent calls. A reconnect
        subscribes every registration anyway."""
        await asyncio.sleep(0)  # let the caller finish registering
        filters, self._unsent = self._unsent, []
        client = self._client
        if client is not None and filters:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe([(f, 1) for f in filters])

    def serve(self, action: Action[R], handler: RequestHandler[R]) -> None:
        """Answer requests on `req/{action.name}`: the envelope's `data` is validated against
        `action.request` before `handler` runs, and its return value against `action.reply`.
        Requests for actions nobody registered get an error reply naming the action."""
        if self._responder is None:
            self._responder = Responder(self)
            sub = _Subscription(topics.REQUEST, topics.REQUEST.wildcard(self.root), self._responder.on_request, raw=True,
                                concurrent=True, checks_own_params=True)
            self._register(sub)
        self._responder.served[action.name] = (action, handler)

    @property
    def served(self) -> dict[str, tuple[Action[Any], RequestHandler[Any]]]:
        """Action name -> (action, handler): what `serve` registered."""
        return self._responder.served if self._responder is not None else {}

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self, *, wait: float | None = 10.0) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"bus:{self.client_id}")
        if wait:
            await self.wait_connected(wait)

    async def wait_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - part of the API
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            if self._fatal:
                raise self._fatal from None
            raise Unavailable(f"cannot reach the MQTT broker at {self.url}") from None

    async def shutdown(self, *, disconnect: bool = True, flush: float = 5.0) -> None:
        """Idempotent: finish background publishes (up to `flush` s), stop the loop, cancel handler
        tasks, disconnect cleanly (no Last Will)."""
        if self._stopping:
            return
        if self._background:
            await asyncio.wait(set(self._background), timeout=flush)
        self._stopping = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("bus shut down"))
        for task in list(self._tasks):
            task.cancel()
        if self._runner:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            try:
                async with self._make_client() as client:
                    write_eagerly(client)
                    self._client = client
                    for sub in self._subs:
                        await client.subscribe(sub.filter, qos=1)
                    await client.subscribe(self._reply_topic, qos=1)
                    self._connected.set()
                    delay = 0.05
                    self.log.debug("bus.connected", broker=f"{self.host}:{self.port}")
                    if self._on_connect:
                        await self._on_connect(self)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    break
                self.log.warning("bus.disconnected", error=str(exc), retry_in=round(delay, 2))
            finally:
                self._connected.clear()
                self._client = None
            if self._stopping:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _make_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry if self.persistent else 0
        will = None
        if self.will:
            topic, payload, retain = self.will
            will = aiomqtt.Will(topic, payload, qos=1, retain=retain)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False if self.persistent else True,
            properties=props,
            keepalive=self.keepalive,
            will=will,
            socket_options=NODELAY,
            max_inflight_messages=100,
            timeout=10,
            **self.security.client_options(self.url),  # security: credentials and TLS
        )

    # --- incoming --------------------------------------------------------------------------
    async def _dispatch(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        payload = bytes(msg.payload) if isinstance(msg.payload, (bytes, bytearray)) else str(msg.payload or "").encode()
        if topic == self._reply_topic:
            self._on_reply(payload, msg.properties)
            return
        for sub in self._subs:
            params = sub.template.match(self.root, topic)
            if params is None or any(params[name] != value for name, value in sub.fixed.items()):
                continue
            if not sub.raw and not payload:  # a cleared retained message
                continue
            if not sub.checks_own_params and (reason := topics.invalid_param(params)):
                self.drop(topic, reason, len(payload))
                return
            envelope = None
            if not sub.raw:
                try:
                    envelope = decode(payload)
                except DecodeError as exc:
                    self.drop(topic, exc.reason, len(payload))
                    continue
            message = Message(topic, params, payload, bool(msg.retain), envelope, msg.properties)
            if sub.concurrent:
                await self._limit.acquire()
                task = asyncio.get_running_loop().create_task(self._call(sub.handler, message, release=True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await self._call(sub.handler, message)

    def drop(self, topic: str, reason: str, size: int) -> None:
        """Count and log (one line) an inbound message that is not valid; the service goes on."""
        self.stats["dropped_invalid"] += 1
        self.log.warning("bus.dropped", topic=topic[:200], reason=reason[:300], bytes=size)

    async def _call(self, handler: Handler, message: Message, *, release: bool = False) -> None:
        try:
            await handler(message)
            self.stats["handled"] += 1
        except asyncio.CancelledError:
            raise
        except DecodeError as exc:
            self.drop(message.topic, exc.reason, len(message.payload))
        except Exception:
            self.stats["handler_errors"] += 1
            self.log.exception("bus.handler_error", topic=message.topic[:200])
        finally:
            if release:
                self._limit.release()

    # --- outgoing --------------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: Envelope | bytes | str | None,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline is part of the API
    ) -> None:
        """Publish, waiting for a connection up to `timeout` (default: `outage`, so a broker restart
        is ridden out); QoS 1 waits for the broker's ack (up to `timeout`, default 10 s)."""
        if isinstance(payload, Envelope):
            payload = payload.to_bytes()
        deadline = asyncio.get_running_loop().time() + (self.outage if timeout is None else timeout)
        timeout = 10.0 if timeout is None else timeout
        while True:
            if not self._connected.is_set():  # connected: no wait_for (it costs a task per publish)
                await self.wait_connected(max(0.01, deadline - asyncio.get_running_loop().time()))
            client = self._client
            if client is not None:
                try:
                    await client.publish(topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout)
                    return
                except aiomqtt.MqttError:
                    pass
            # disconnected between the check and the publish: retry until the deadline
            if asyncio.get_running_loop().time() >= deadline:
                raise Unavailable(f"could not publish to {topic}: broker unreachable")
            await asyncio.sleep(0.05)

    async def publish_soon(self, topic: str, payload: Envelope | bytes, *, retain: bool = False) -> None:
        """Start a QoS 1 publish and return without waiting for the broker's ack, so a sender of
        many messages overlaps their round trips (in order: MQTT keeps a client's order). At most
        `max_background` are in flight; beyond that this waits for a slot. A publish that fails
        is logged and counted (`stats["publish_failed"]`); `shutdown` waits for those in flight."""
        await self._background_slots.acquire()
        task = asyncio.get_running_loop().create_task(self._publish_background(topic, payload, retain))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_background(self, topic: str, payload: Envelope | bytes, retain: bool) -> None:
        try:
            await self.publish(topic, payload, retain=retain)
        except Unavailable as exc:
            self.stats["publish_failed"] += 1
            self.log.warning("bus.publish_failed", topic=topic[:200], error=str(exc))
        finally:
            self._background_slots.release()

    def envelope(self, type_: str, data: dict[str, Any], *, subject: str = "", id: str | None = None) -> Envelope:
        kwargs: dict[str, Any] = {"type": type_, "data": data, "source": self.source, "subject": subject}
        if id:
            kwargs["id"] = id
        return Envelope(**kwargs)

    # --- requests (the answering side is `ember.rpc.Responder`) ----------------------------
    async def request(
        self,
        action: Action[Any] | str,
        data: BaseModel | dict[str, Any] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a per-call deadline is part of the API
        id: str | None = None,
    ) -> Any:
        """Send `req/{action}` and wait for the reply's result (JSON data); raises the reply's typed
        error (the server validates `data`)."""
        name = action if isinstance(action, str) else action.name
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json", exclude_unset=True)
        data = data or {}
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self._reply_topic
        props.CorrelationData = correlation
        try:
            await self.publish(
                topics.REQUEST.format(self.root, action=name),
                self.envelope(f"request.{name}", data, id=id),
                properties=props,
                timeout=timeout,
            )
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {name} within {timeout:g}s (is the manager running?)") from None
        finally:
            self._pending.pop(correlation, None)
        if reply.data.get("ok"):
            return reply.data.get("result")
        raise from_reply(reply.data.get("error") or {})

    def _on_reply(self, payload: bytes, properties: Any) -> None:
        correlation = getattr(properties, "CorrelationData", None)
        future = self._pending.get(bytes(correlation)) if correlation else None
        if future is None or future.done():
            return
        try:
            future.set_result(decode(payload, limit=MAX_REPLY_BYTES))
        except DecodeError as exc:
            future.set_exception(EmberError(f"invalid reply: {exc.reason}"))
