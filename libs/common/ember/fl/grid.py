"""`MqttGrid`: Flower's `Grid` interface over Ember's MQTT bus (push, not poll).

Flower's strategies and a user's `ServerApp` call the grid synchronously; Ember's bus is
asyncio. So the strategy runs in a worker thread (`asyncio.to_thread`) and every blocking
grid method hands a coroutine to the bus's event loop (`run_coroutine_threadsafe`); only
`get_node_ids` reads the membership where it is called. All grid state lives on the loop.
Messages are serialised in the worker thread (a content shared by several, once); small replies
are decoded on the loop as they arrive, large ones in the thread.

- Each learner actor id maps to a stable int node id (`node_id_for`).
- `push_messages` sends each message on `jobs/{job}/fl/{actor}/down` (frames: `ember.fl.serde`);
  replies arrive on `.../up` and resolve the message's pending future. Messages that share one
  content (Flower's strategies send the global model to every node) and together address every
  live learner go out as one *cast* on `jobs/{job}/fl/cast`: the content leaves the aggregator
  once, not once per learner, and the broker fans it out.
- A learner is live after its `ready` frame and until its `gone` frame (its MQTT Last Will).
  Messages to a learner that goes get an error reply (`NODE_UNAVAILABLE`), as Flower's
  SuperLink would give; messages not answered within the timeout get no reply.
- Once `arm()`ed (after round 1 can start), `get_node_ids` and waits raise `TooFewLearners`
  as soon as fewer than `minimum` learners are live: the job stops instead of hanging.
- The learners are a roster that `update_roster` changes while the job runs (the aggregator
  follows its own placement, `ember.fl.fence`): a learner left out is *fenced* (gone for good;
  its frames are dropped, so it never contributes again), a learner added (re-placed after a
  node loss) is pinged and joins as soon as it is ready. A joining learner counts towards the
  minimum until `join_timeout` has passed, so a re-placement does not fail the job meanwhile.
- `get_node_ids` never shrinks between two pushes: a learner that goes is dropped from it at
  the next push (its messages meanwhile get the error reply). Flower's strategies count the
  nodes, then wait until at least that many are connected (`sample_nodes`), so the two calls
  must agree: a count that shrank in between would leave that wait without an end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from ember import topics
from ember.bus import Bus
from ember.bus import Message as BusMessage
from ember.errors import EmberError
from ember.fl import flwr_compat as compat
from ember.fl.codecs import decode_message
from ember.fl.content import ContentBook
from ember.fl.rounds import RoundBook, round_key
from ember.fl.serde import FrameError, Kind, Reassembler, cast_table, chunk_message, decode_frame, signal
from ember.log import get_logger

T = TypeVar("T")
DECODE_ON_LOOP_BYTES = 1024 * 1024
"""Replies up to this size are decoded on the loop as they arrive (see `MqttGrid._decoded`)."""
QUICK_EXCHANGE_S = 0.5
"""After 4 exchanges at most this long (train and evaluate of 2 rounds), `on_round_start` runs
once the next exchange's replies are in rather than as soon as its messages are out: what it
starts (a `RoundCompleted` that wakes the manager and every watcher) then runs while the
learners are idle instead of competing with them for the CPU, which shortens fast rounds
(docs/benchmarks.md, "Figures behind the code"), and is late by about one such exchange."""


class TooFewLearners(EmberError):
    """Fewer live learners than `learners.min`: the job cannot go on."""

    code = "too_few_learners"


class GridClosed(EmberError):
    code = "grid_closed"


def node_id_for(actor: str) -> int:
    """Stable Flower node id of a learner actor (56 bits of its SHA-256, never 0 or 1)."""
    return int.from_bytes(hashlib.sha256(actor.encode()).digest()[:7], "big") + 2


_Outgoing = tuple[str, str, Message, int]
"""A message to push: (message id, learner actor, message, round number)."""


@dataclass
class _Publish:
    """The frames of one message to its learner, or (`cast`) of one content to several."""

    actors: list[str]
    frames: list[bytes]
    cast: bool = False


@dataclass
class _Batch:
    messages: list[_Outgoing]
    publishes: list[_Publish]


@dataclass
class _Pending:
    message: Message
    actor: str
    round: int
    future: asyncio.Future[bytes | Message | None]


class MqttGrid(Grid):
    """A Flower `Grid` whose nodes are Ember learner actors reached over MQTT."""

    def __init__(
        self,
        bus: Bus,
        *,
        job: str,
        learners: Sequence[str],
        minimum: int,
        run_id: int,
        book: RoundBook | None = None,
        join_timeout: float = 60.0,
    ) -> None:
        self.bus = bus
        self.job = job
        self.learners = list(learners)
        self.minimum = minimum
        self.book = book or RoundBook()
        self.stats: Counter[str] = Counter()
        self.log = get_logger("ember.fl.grid", job=job)
        self._node_of = {actor: node_id_for(actor) for actor in self.learners}
        self._actor_of = {node: actor for actor, node in self._node_of.items()}
        self._ready: set[str] = set()
        self._gone: dict[str, str] = {}
        self._fenced: dict[str, str] = {}
        self._joining: dict[str, float] = {}
        """Learners added by `update_roster` and not ready yet -> when they stop counting (monotonic)."""
        self.join_timeout = join_timeout
        self._pending: dict[str, _Pending] = {}
        self._chunks = {actor: Reassembler() for actor in self.learners}
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed = False
        self._closed: str | None = None
        self._listed: list[int] = []
        """What `get_node_ids` last returned (see the module docstring)."""
        self._listed_lock = threading.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._run = compat.make_run(run_id)
        self.on_round_start: Callable[[int], None] | None = None
        """Called (in the strategy's thread) with the round number of pushed messages, once they
        are on their way (so what it does, e.g. reporting the previous round, overlaps the round);
        in `send_and_receive`, when the last exchanges were quick (`QUICK_EXCHANGE_S`), once this
        one's replies are in instead."""
        self._memo = compat.PieceMemo()
        """Records sent recently, serialised (one sent again unchanged is not serialised again)."""
        self.content = ContentBook()
        """What each learner holds, so content it has goes as a reference (`ember.fl.content`)."""
        self._exchange_s: deque[float] = deque(maxlen=4)
        """Seconds the last `send_and_receive` calls took (a round has one to a few)."""
        bus.subscribe(topics.FL_UP, self._on_up, raw=True, job=job)

    # --- the Flower Grid interface (blocking; call from a worker thread) --------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The live learners' node ids, read in the calling thread (no hop to the loop: Flower
        asks before every push; the membership sets are only read here, and `_listed` is guarded)."""
        self._check()
        live = {self._node_of[actor] for actor in self.live()}
        with self._listed_lock:
            self._listed = sorted(live | set(self._listed))  # grows at once, shrinks at the next push
            return list(self._listed)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = self._prepare(messages)
        self._call(self._push_all(batch))
        self._rounds_started(batch)
        return [message_id for message_id, *_ in batch.messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for pending, data in self._call(self._take(list(message_ids), drop_missing=False)):
            replies.append(self._reply(pending, data))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        batch = self._prepare(messages)
        if not batch.messages:
            return []
        started = time.perf_counter()
        quick = len(self._exchange_s) == self._exchange_s.maxlen and max(self._exchange_s) <= QUICK_EXCHANGE_S
        exchange = self._submit(self._exchange(batch, timeout))
        try:
            if not quick:
                self._rounds_started(batch)
        except BaseException:
            exchange.cancel()
            raise
        answered = exchange.result()
        self._exchange_s.append(time.perf_counter() - started)
        if quick:
            self._rounds_started(batch)
        replies = []
        for pending, data in answered:
            if pending.future.done():
                replies.append(self._reply(pending, data))
            else:
                self.stats["timeouts"] += 1
                self.book.replied(pending.round, pending.actor, ok=False)
                self.log.warning("grid.no_reply", actor=pending.actor, timeout=timeout)
        return replies

    def _prepare(self, messages: Iterable[Message]) -> _Batch:
        """Serialise and frame the messages (in the strategy's thread, off the loop). A content
        shared by several messages (the global model) is serialised once, and sent once as a cast
        when those messages address every live learner (a learner a cast does not name drops it:
        with a sample of the learners, each gets its own message). A cast goes out when at least
        one learner it names is reachable; the others' messages get the error reply as usual."""
        messages = list(messages)
        batch = _Batch([], [])
        for message in messages:
            actor = self._actor_of.get(message.metadata.dst_node_id)
            if actor is None:
                raise ValueError(f"unknown destination node {message.metadata.dst_node_id}")
            compat.set_message_id(message, uuid.uuid4().hex)
            batch.messages.append((message.metadata.message_id, actor, message, self.book.sent(round_key(message))))
        parts = compat.message_pieces(messages, self._memo)
        sharing: dict[int, list[int]] = {}
        for index, (_, pieces) in enumerate(parts):
            if pieces:
                sharing.setdefault(id(pieces), []).append(index)
        live = set(self.live())
        cast: set[int] = set()
        for indices in sharing.values():
            actors = {batch.messages[i][1] for i in indices}
            if len(indices) >= 2 and len(actors) == len(indices) and live <= actors:
                heads = {batch.messages[i][1]: parts[i][0] for i in indices}
                batch.publishes.append(self._content_publish(heads, parts[indices[0]][1], cast=True))
                cast.update(indices)
        for index, (head, pieces) in enumerate(parts):
            if index not in cast:
                batch.publishes.append(self._content_publish({batch.messages[index][1]: head}, pieces))
        return batch

    # --- content references (ember.fl.content) ----------------------------------------------
    def _content_publish(self, heads: dict[str, bytes], pieces: list[bytes], *, cast: bool = False) -> _Publish:
        """The frames of one content to the learners of `heads`: pieces they all hold go as
        references; the full pieces are kept for a learner that reports a `miss`."""
        transfer = uuid.uuid4().hex
        table, inline = self.content.plan(list(heads), pieces)
        extra = {"c": table} if pieces else None
        if len(inline) < len(pieces):
            self.content.keep(transfer, {actor: (head, pieces) for actor, head in heads.items()})
        buffers = [cast_table(heads), *inline] if cast else [*heads.values(), *inline]  # chunked, never joined
        return _Publish(list(heads), list(chunk_message(buffers, transfer=transfer, extra=extra)), cast=cast)

    async def _resend(self, actor: str, transfer: str) -> None:
        """A learner lacked content a transfer referenced: send it its message in full."""
        full = self.content.full(transfer, actor)
        self.stats["content_misses"] += 1
        if full is None:
            self.log.warning("grid.miss_unknown_transfer", actor=actor, transfer=transfer[:32])
            return
        head, pieces, table = full
        self.log.info("grid.content_resent", actor=actor)
        for frame in chunk_message([head, *pieces], extra={"c": table}):
            await self.bus.publish(self._down(actor), frame)

    def _rounds_started(self, batch: _Batch) -> None:
        if self.on_round_start is not None:
            for number in sorted({number for *_, number in batch.messages}):
                self.on_round_start(number)

    # --- lifecycle and membership (on the event loop) ---------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Remember the bus's event loop (call from it before handing the grid to a thread)."""
        self._loop = loop or asyncio.get_running_loop()

    def live(self) -> list[str]:
        return [actor for actor in self.learners if actor in self._ready and actor not in self._gone]

    async def wait_ready(self, timeout: float, *, grace: float = 5.0) -> list[str]:
        """Ping every learner, wait until all (or, after `grace`, `minimum`) are ready; arm."""
        self.bind()
        loop = asyncio.get_running_loop()
        await self.signal_all("ping")
        deadline = loop.time() + timeout
        settle: float | None = None
        while len(self.live()) < len(self.learners):
            if self._closed:
                raise GridClosed(self._closed)
            if len(self.learners) - len(self._gone) < self.minimum:
                break  # too many said they are gone: the minimum cannot be reached
            now = loop.time()
            if settle is None and len(self.live()) >= self.minimum:
                settle = now + grace  # enough to start: give the others a short grace
            remaining = min(deadline, settle if settle is not None else deadline) - now
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        live = self.live()
        if len(live) < self.minimum:
            gone = "; ".join(f"{actor}: {reason}" for actor, reason in sorted(self._gone.items()))
            waited = f"after {timeout:g}s" if len(self.learners) - len(self._gone) >= self.minimum else "(the others are gone)"
            raise TooFewLearners(f"only {len(live)} learners ready {waited}, minimum {self.minimum}" + (f" [{gone}]"[:1200] if gone else ""))
        self._armed = True
        return live

    async def signal_all(self, kind: Kind, **header: Any) -> None:
        """Publish a control frame (`ping`, `done`) to every learner."""
        await asyncio.gather(*(self.bus.publish(self._down(actor), signal(kind, **header)) for actor in self.learners))

    def close(self, reason: str) -> None:
        """Stop the grid (on the loop): pending and later calls raise `GridClosed(reason)`."""
        self._closed = reason
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(None)
        self._notify()

    def below_minimum(self) -> str | None:
        live = len(self.live())
        if not self._armed or live >= self.minimum:
            return None
        now = time.monotonic()
        joining = [a for a, until in list(self._joining.items()) if until > now and a not in self._gone]
        if live + len(joining) >= self.minimum:
            return None
        return f"only {live} learners left, minimum {self.minimum}"

    def update_roster(self, learners: Sequence[str], reason: str = "re-placed") -> None:
        """The job's learners are now `learners` (on the loop): fence the ones left out, add the new."""
        wanted = list(dict.fromkeys(learners))
        for actor in [a for a in self.learners if a not in wanted]:
            self._fenced[actor] = f"fenced: {reason}"
            self._joining.pop(actor, None)
            self._mark_gone(actor, self._fenced[actor])
        added = [a for a in wanted if a not in self._node_of and a not in self._fenced]
        for actor in added:
            self._node_of[actor] = node = node_id_for(actor)
            self._actor_of[node] = actor
            self._chunks[actor] = Reassembler()
            self._joining[actor] = time.monotonic() + self.join_timeout
        self.learners = [a for a in wanted if a not in self._fenced]
        if added:
            self.log.info("grid.learners_joining", learners=added, live=len(self.live()))
            for actor in added:  # a learner that is ready already answers the ping with `ready`
                task = asyncio.get_running_loop().create_task(self._ping(actor))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self._notify()

    async def _ping(self, actor: str) -> None:
        try:
            await self.bus.publish(self._down(actor), signal("ping"))
        except EmberError as exc:
            self.log.warning("grid.ping_failed", actor=actor, error=exc.message)

    # --- internals ---------------------------------------------------------------------------
    def _down(self, actor: str) -> str:
        return topics.FL_DOWN.format(self.bus.root, job=self.job, actor=actor)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro).result()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            coro.close()
            raise RuntimeError("MqttGrid.bind() was not called on the bus's event loop")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("MqttGrid's blocking methods must run outside its event loop (use asyncio.to_thread)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _check(self) -> None:
        if self._closed:
            raise GridClosed(self._closed)
        reason = self.below_minimum()
        if reason:
            raise TooFewLearners(reason)

    async def _push_all(self, batch: _Batch) -> None:
        self._check()
        with self._listed_lock:
            self._listed = []  # the next get_node_ids lists the learners live then
        reachable = set()
        for message_id, actor, message, number in batch.messages:
            future: asyncio.Future[bytes | Message | None] = asyncio.get_running_loop().create_future()
            self._pending[message_id] = _Pending(message, actor, number, future)
            if actor in self._gone or actor not in self._ready:
                future.set_result(None)
            else:
                reachable.add(actor)
        await asyncio.gather(*(self._send(publish) for publish in batch.publishes if reachable.intersection(publish.actors)))

    async def _exchange(self, batch: _Batch, timeout: float | None) -> list[tuple[_Pending, bytes | Message | None]]:
        """Push, wait for the replies, take them: one hop from the strategy's thread, not three."""
        ids = [message_id for message_id, *_ in batch.messages]
        await self._push_all(batch)
        await self._wait(ids, timeout)
        return await self._take(ids, drop_missing=True)

    async def _send(self, publish: _Publish) -> None:
        if publish.cast:
            topic = topics.FL_CAST.format(self.bus.root, job=self.job)
            self.stats["casts"] += 1
        else:
            topic = self._down(publish.actors[0])
        for frame in publish.frames:
            await self.bus.publish(topic, frame)
        self.stats["frames_sent"] += len(publish.frames)

    async def _wait(self, ids: list[str], timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._check()
            waiting: list[asyncio.Future[Any]] = [self._pending[i].future for i in ids if i in self._pending and not self._pending[i].future.done()]
            remaining = None if deadline is None else deadline - loop.time()
            if not waiting or (remaining is not None and remaining <= 0):
                return
            changed: asyncio.Future[Any] = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait([*waiting, changed], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()

    async def _take(self, ids: list[str], *, drop_missing: bool) -> list[tuple[_Pending, bytes | Message | None]]:
        out = []
        for message_id in ids:
            pending = self._pending.get(message_id)
            if pending is None or (not pending.future.done() and not drop_missing):
                continue
            del self._pending[message_id]
            out.append((pending, pending.future.result() if pending.future.done() else None))
        return out

    def _reply(self, pending: _Pending, data: bytes | Message | None) -> Message:
        group, kind = pending.round, pending.message.metadata.message_type
        if data is None:
            reason = self._closed or f"learner {pending.actor} is gone: {self._gone.get(pending.actor, 'not ready')}"
            self.book.replied(group, pending.actor, ok=False)
            return compat.error_reply(pending.message, compat.NODE_UNAVAILABLE, reason)
        reply = data if isinstance(data, Message) else compat.message_from_bytes(data)
        decode_message(reply)  # undo a learner's update codec (ember.fl.codecs)
        if reply.has_error():
            self.book.replied(group, pending.actor, ok=False)
            self.log.warning("grid.error_reply", actor=pending.actor, code=reply.error.code, reason=(reply.error.reason or "")[:300])
            return reply
        metrics: dict[str, Any] = {}
        for record in reply.content.metric_records.values():
            metrics.update(record)
        self.book.replied(group, pending.actor, ok=True, kind=kind, metrics=metrics)
        return reply

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _on_up(self, message: BusMessage) -> None:
        actor = message.params.get("actor", "")
        if actor in self._fenced:
            self.stats["fenced_frames"] += 1
            return
        if actor not in self._node_of:
            self.stats["unknown_learner"] += 1
            self.log.warning("grid.unknown_learner", actor=actor[:100])
            return
        if not message.payload:
            return
        frame = decode_frame(message.payload)  # FrameError: the bus drops it with one warning
        if frame.kind == "ready":
            if actor not in self._ready or actor in self._gone:
                self.log.info("grid.learner_ready", actor=actor, joined=actor in self._joining)
            self._ready.add(actor)
            self._gone.pop(actor, None)
            self._joining.pop(actor, None)
            self._notify()
        elif frame.kind == "gone":
            self._mark_gone(actor, str(frame.header.get("reason") or "connection lost"))
        elif frame.kind == "miss":
            await self._resend(actor, str(frame.header.get("t", "")))
        elif frame.kind == "msg":
            whole = self._chunks[actor].feed(frame)
            if whole is None:
                return
            data, reply_to = whole
            pending = self._pending.get(reply_to or "")
            if pending is None or pending.actor != actor or pending.future.done():
                self.stats["late_or_unknown_replies"] += 1
                return
            pending.future.set_result(self._decoded(bytes(data)))  # the reply's buffer is freed at once
            self.stats["replies"] += 1
        else:
            raise FrameError(f"unexpected {frame.kind!r} frame from learner {actor}")

    @staticmethod
    def _decoded(data: bytes) -> bytes | Message:
        """A small reply is decoded here, on the loop, while the others are still awaited (it was
        the strategy thread's work after the last reply came in); a large one stays bytes."""
        if len(data) > DECODE_ON_LOOP_BYTES:
            return data
        try:
            return compat.message_from_bytes(data)
        except ValueError:
            return data  # `_reply` raises it in the strategy's thread, as for a large one

    def _mark_gone(self, actor: str, reason: str) -> None:
        if actor in self._gone:
            return
        self._gone[actor] = reason
        self._ready.discard(actor)
        self.log.warning("grid.learner_gone", actor=actor, reason=reason[:300], live=len(self.live()))
        for pending in self._pending.values():
            if pending.actor == actor and not pending.future.done():
                pending.future.set_result(None)
        self._notify()

