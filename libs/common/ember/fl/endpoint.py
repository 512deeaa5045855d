"""The learner's side of the grid: answer the aggregator's Flower messages with a ClientApp.

`LearnerEndpoint` subscribes (raw) to its `down` topic and to the job's `cast` topic (one
content for several learners: it takes its own message out of a cast that names it and ignores
the others), joins chunked messages, hands each message to a Flower `ClientApp` (one at a time,
in arrival order) and publishes the reply on its `up` topic. It announces `ready` when told the
app is prepared (and again on every `ping` and reconnect), and finishes when the aggregator
sends `done`.

A message type whose last handling took at most `INLINE_MAX_S` is handled on the event loop
itself; any other (the first of each type, which usually loads data, and every slow one) in a
worker thread, so the MQTT connection keeps its keepalive while the app works. Fast types
stay on the loop because the two thread hand-offs can cost more than a small model's compute
(docs/benchmarks.md, "Figures behind the code").

The bus carrying it must be created with `will=learner_will(...)`, so a learner that dies is
reported `gone` by the broker. `ready` and `gone` are retained (the learner's latest status,
like a node's status), so an aggregator that subscribes late still learns it; a clean exit
clears it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message

from ember import topics
from ember.bus import Bus
from ember.bus import Message as BusMessage
from ember.fl import flwr_compat as compat
from ember.fl.codecs import encode_message
from ember.fl.content import ContentCache
from ember.fl.serde import FrameError, Reassembler, cast_parts, chunk_message, decode_frame, signal
from ember.log import get_logger

ClientAppLike = Callable[[Message, Context], Message]
INLINE_MAX_S = 0.05
"""A message type handled this fast last time is handled on the loop (no thread hand-off).
Blocking the loop that long is harmless: the broker drops a client only after 1.5 keepalives
(7.5 s for a learner), 150 times this; a type that turns slow goes back to the thread."""
INLINE_MAX_BYTES = 1024 * 1024
"""Larger messages are decoded (and handled) in the thread whatever their type."""
SESSION_EXPIRY = 120
"""Seconds the broker keeps an actor's MQTT session (and queues its messages) after a disconnect."""


def up_topic(root: str, job: str, actor: str) -> str:
    return topics.FL_UP.format(root, job=job, actor=actor)


def learner_will(root: str, job: str, actor: str) -> tuple[str, bytes, bool]:
    """The Last Will a learner's bus must carry: `gone` on its up topic."""
    return up_topic(root, job, actor), signal("gone", reason="connection lost"), True


class LearnerEndpoint:
    """One learner actor's MQTT endpoint. Register before the bus starts; then `serve()`."""

    def __init__(self, bus: Bus, *, job: str, actor: str) -> None:
        self.bus, self.job, self.actor = bus, job, actor
        self.log = get_logger("ember.fl.endpoint", job=job, actor=actor)
        self.handled = 0
        self.done = asyncio.Event()
        self.done_ok: bool | None = None
        self._stop_reason = ""
        self._app: ClientAppLike | None = None
        self._context: Context | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._chunks = Reassembler()
        self._cast_chunks = Reassembler()
        self.codec = "none"
        """The update codec applied to replies (`training.update_codec`, `ember.fl.codecs`)."""
        self._content = ContentCache()
        """The last content received, so the aggregator can send references (`ember.fl.content`)."""
        self._last_s: dict[str, float] = {}
        """Seconds the last message of each type took to handle (see `INLINE_MAX_S`)."""
        self._up = up_topic(bus.root, job, actor)
        bus.subscribe(topics.FL_DOWN, self._on_down, raw=True, job=job, actor=actor)
        bus.subscribe(topics.FL_CAST, self._on_cast, raw=True, job=job)

    @property
    def ready(self) -> bool:
        return self._app is not None

    async def announce(self, app: ClientAppLike, context: Context) -> None:
        """The app is prepared (data loaded): answer messages from now on and say so."""
        self._app, self._context = app, context
        await self.bus.publish(self._up, signal("ready"), retain=True)
        self.log.info("learner.ready")

    async def on_reconnect(self, bus: Bus) -> None:
        """Pass as the bus's `on_connect`: after a reconnect the aggregator saw us `gone`."""
        if self.ready:
            await bus.publish(self._up, signal("ready"), retain=True)

    async def fail(self, reason: str) -> None:
        """Tell the aggregator this learner stops (e.g. its data could not be loaded)."""
        await self.bus.publish(self._up, signal("gone", reason=reason[:500]), retain=True)

    async def clear(self) -> None:
        """Remove this learner's retained status (a clean exit after `done`)."""
        await self.bus.publish(self._up, b"", retain=True)

    async def run(self, prepare: Callable[[], tuple[ClientAppLike, Context]]) -> bool | None:
        """Prepare the app in a thread (load data), announce, serve until `done`.

        A failing `prepare` is reported to the aggregator as `gone` with its reason, then raised.
        """
        try:
            app, context = await asyncio.to_thread(prepare)
        except Exception as exc:
            self.log.exception("learner.prepare_failed")
            await self.fail(f"{type(exc).__name__}: {exc}")
            raise
        if not self.done.is_set():  # stopped (SIGTERM, fenced) while preparing: never say ready
            await self.announce(app, context)
        return await self.serve()

    async def serve(self) -> bool | None:
        """Answer messages until the aggregator says `done`; returns its `ok` flag."""
        async with asyncio.TaskGroup() as tg:
            worker = tg.create_task(self._work())
            await self.done.wait()
            worker.cancel()
        if self._stop_reason:
            await self.fail(self._stop_reason)  # leaving early: the aggregator must know
        else:
            await self.clear()
        return self.done_ok

    def stop(self, reason: str) -> None:
        """Leave before the aggregator says `done` (e.g. SIGTERM); it is told `gone`."""
        self._stop_reason = reason
        self.done.set()

    async def _on_down(self, message: BusMessage) -> None:
        if not message.payload:
            return
        frame = decode_frame(message.payload)  # FrameError: the bus drops it with one warning
        if frame.kind == "msg":
            whole = self._chunks.feed_whole(frame)
            if whole is not None:
                await self._received(whole.data, whole.header)
        elif frame.kind == "ping":
            if self.ready:
                await self.bus.publish(self._up, signal("ready"))
        elif frame.kind == "done":
            self.done_ok = bool(frame.header.get("ok", True))
            self.log.info("learner.done", ok=self.done_ok, handled=self.handled)
            self.done.set()
        else:
            raise FrameError(f"unexpected {frame.kind!r} frame on a down topic")

    async def _on_cast(self, message: BusMessage) -> None:
        if not message.payload:
            return
        frame = decode_frame(message.payload)  # FrameError: the bus drops it with one warning
        if frame.kind != "msg":
            raise FrameError(f"unexpected {frame.kind!r} frame on the cast topic")
        whole = self._cast_chunks.feed_whole(frame)
        if whole is None:
            return
        mine = cast_parts(whole.data, self.actor)
        if mine is None:
            self.bus.stats["casts_not_addressed"] += 1  # the aggregator sampled other learners
        else:
            await self._received(mine[1], whole.header, head=mine[0])

    async def _received(self, data: bytes | bytearray | memoryview, header: dict[str, Any], *, head: bytes = b"") -> None:
        """Queue a whole message (`head + data`), its referenced content filled in from the cache;
        if this learner lacks that content, ask the aggregator for the message in full (`miss`)."""
        message = self._content.resolve(data, header.get("c"), head=head)
        if message is None:
            self.bus.stats["content_misses"] += 1
            await self.bus.publish(self._up, signal("miss", t=header.get("t")))
        else:
            self._queue.put_nowait(message)

    async def _work(self) -> None:
        while True:
            data = await self._queue.get()
            if self._app is None:  # cannot happen with a well-behaved aggregator; do not wedge
                self.log.warning("learner.message_before_ready")
                continue
            try:
                reply, reply_to = await self._answer(data)
            except ValueError as exc:
                self.bus.stats["dropped_invalid"] += 1
                self.log.warning("learner.dropped", reason=str(exc)[:300])
                continue
            for frame in chunk_message(reply, reply_to=reply_to):
                await self.bus.publish(self._up, frame)
            self.handled += 1

    async def _answer(self, data: bytes) -> tuple[bytes, str]:
        """The reply to one message: on the loop if it is small and its type was fast last time
        (`INLINE_MAX_S`), else decoded and handled in a worker thread. An app that fails on the
        loop is given the message again in the thread (code that needs a thread of its own, e.g.
        one calling `asyncio.run`), and its type stays there."""
        started = time.perf_counter()
        message = compat.message_from_bytes(data) if len(data) <= INLINE_MAX_BYTES else None
        if message is not None and self._last_s.get(message.metadata.message_type, INLINE_MAX_S + 1) <= INLINE_MAX_S:
            reply, reply_to, kind, error = self._handle(message, quiet=True)
            if error is None:
                self._last_s[kind] = time.perf_counter() - started
                return reply, reply_to
            self._last_s[kind] = math.inf  # failed on the loop: this type stays in the thread
            self.log.info("learner.moved_to_thread", type=kind, error=f"{type(error).__name__}: {error}"[:300])
        reply, reply_to, kind, _ = await asyncio.to_thread(self._handle, data if message is None else message)
        if self._last_s.get(kind) != math.inf:
            self._last_s[kind] = time.perf_counter() - started
        return reply, reply_to

    def _handle(self, message: Message | bytes, *, quiet: bool = False) -> tuple[bytes, str, str, Exception | None]:
        """Run the app on one message: (reply bytes, id of the message answered, its type, what the
        app raised). A raising app gets Flower's error reply (logged unless `quiet`)."""
        if isinstance(message, bytes):
            message = compat.message_from_bytes(message)
        assert self._app is not None and self._context is not None
        error: Exception | None = None
        try:
            reply = self._app(message, self._context)
        except Exception as exc:  # the user's code failed: Flower's error reply, keep serving
            error = exc
            if not quiet:
                self.log.exception("learner.clientapp_failed", type=message.metadata.message_type)
            reply = compat.error_reply(message, compat.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}")
        compat.set_message_id(reply, uuid.uuid4().hex)
        encode_message(reply, self.codec)
        return compat.message_to_bytes(reply), message.metadata.message_id, message.metadata.message_type, error


def learner_bus(url: str, *, root: str, job: str, actor: str, keepalive: int = 5) -> tuple[Bus, LearnerEndpoint]:
    """A learner's bus (Last Will `gone`, re-announce after reconnects) and its endpoint."""
    endpoint: LearnerEndpoint | None = None

    async def reconnected(bus: Bus) -> None:
        if endpoint is not None:
            await endpoint.on_reconnect(bus)

    bus = Bus(
        url,
        client_id=actor,
        root=root,
        source=actor,
        keepalive=keepalive,
        will=learner_will(root, job, actor),
        on_connect=reconnected,
        persistent=True,  # a short disconnect loses no message: the broker queues them
        session_expiry=SESSION_EXPIRY,
    )
    endpoint = LearnerEndpoint(bus, job=job, actor=actor)
    return bus, endpoint
