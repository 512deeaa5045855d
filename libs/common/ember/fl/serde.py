"""Frames on `jobs/{job}/fl/{actor}/down|up` and `jobs/{job}/fl/cast`: Flower messages (chunked)
and control signals.

These topics carry binary frames, not JSON envelopes (the bus subscribes to them raw).

Frame format (all integers big-endian)::

    +---------+-------------------+----------------------+-----------------+
    | b"EMB1" | header length: u16| header: UTF-8 JSON   | body: bytes     |
    +---------+-------------------+----------------------+-----------------+

The header is a JSON object whose `k` (kind) is one of:

- `msg`: one chunk of a Flower `Message` serialised with Flower's own protobuf serde
  (`flwr.common.serde.message_to_proto(...).SerializeToString()`). Header fields:
  `t` transfer id (hex, unique per message), `i` chunk index (0-based), `n` chunk count,
  `size` total bytes; on replies also `re`, the id of the message answered. Bodies are at
  most `CHUNK_BYTES` (512 KiB); the receiver joins chunks by index, in any order.
- `ready` (learner -> aggregator, retained): the learner loaded its data and answers messages.
- `gone` (learner -> aggregator, retained): the learner stopped; its MQTT Last Will carries
  this frame, so a learner that dies is seen within the keepalive. `reason` may say why.
  An empty retained payload clears the status (a learner's clean exit).
- `ping` (aggregator -> learner): "announce yourself again if you are ready".
- `done` (aggregator -> learner): training is over (`ok` true/false); the learner exits.
- `miss` (learner -> aggregator): the transfer `t` referenced content this learner does not
  hold (`ember.fl.content`); the aggregator resends the learner's message in full.

A `msg` chunk may also carry `c`, the piece table of its message's content (`ember.fl.content`).

A *cast* (`jobs/{job}/fl/cast`, aggregator -> every learner) carries one Flower content for
several learners at once: its `msg` chunks join to `pack_cast` bytes, a table of each addressed
learner's message head (its metadata, serialised alone) followed by the shared content, once::

    +-----------+---------------------------------------------------+-----------------+
    | count: u32| count x (u16 actor len, actor, u32 head len, head) | shared content  |
    +-----------+---------------------------------------------------+-----------------+

A learner's message is its head followed by the content (`unpack_cast`); a learner the table
does not name ignores the cast.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ember.envelope import DecodeError

MAGIC = b"EMB1"
_PREFIX = struct.Struct(">4sH")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
CHUNK_BYTES = 512 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024 * 1024
MAX_CHUNKS = MAX_MESSAGE_BYTES // CHUNK_BYTES
Kind = Literal["msg", "ready", "gone", "ping", "done", "miss"]
KINDS = ("msg", "ready", "gone", "ping", "done", "miss")


class FrameError(DecodeError):
    """A frame that is not a valid Ember FL frame: the bus drops it with one warning."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its kind, header fields and body."""

    kind: Kind
    header: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        head = json.dumps({"k": self.kind, **self.header}, separators=(",", ":")).encode()
        return _PREFIX.pack(MAGIC, len(head)) + head + self.body


def signal(kind: Kind, **header: Any) -> bytes:
    """A control frame (`ready`, `gone`, `ping`, `done`) as bytes."""
    return Frame(kind, header).to_bytes()


def decode_frame(payload: bytes) -> Frame:
    """Parse one frame; raises ValueError with a short reason on anything malformed."""
    if len(payload) < _PREFIX.size:
        raise FrameError(f"frame too short ({len(payload)} bytes)")
    magic, head_len = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise FrameError("not an Ember FL frame (bad magic)")
    end = _PREFIX.size + head_len
    if len(payload) < end:
        raise FrameError("truncated frame header")
    try:
        header = json.loads(payload[_PREFIX.size : end])
    except ValueError:
        raise FrameError("frame header is not JSON") from None
    if not isinstance(header, dict) or header.get("k") not in KINDS:
        raise FrameError(f"unknown frame kind {header.get('k') if isinstance(header, dict) else header!r}")
    kind = header.pop("k")
    return Frame(kind, header, bytes(payload[end:]))


def chunk_message(
    data: bytes | Sequence[bytes | memoryview],
    *,
    reply_to: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    transfer: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[bytes]:
    """Split a serialised Flower message into `msg` frames (one if it is small). `data` may be a
    sequence of buffers that concatenate to the message: each frame copies its slices straight
    from them (the message is never joined first). `extra` header fields (e.g. the piece table
    `c`) go on every chunk, so any chunk describes the transfer."""
    buffers = [memoryview(data)] if isinstance(data, bytes | bytearray | memoryview) else [memoryview(b) for b in data]
    size = sum(b.nbytes for b in buffers)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    transfer = transfer or uuid.uuid4().hex
    count = max(1, -(-size // chunk_bytes))
    source, offset = 0, 0
    for index in range(count):
        header: dict[str, Any] = {"t": transfer, "i": index, "n": count, "size": size, **(extra or {})}
        if reply_to is not None:
            header["re"] = reply_to
        head = json.dumps({"k": "msg", **header}, separators=(",", ":")).encode()
        parts: list[bytes | memoryview] = [_PREFIX.pack(MAGIC, len(head)), head]
        wanted = min(chunk_bytes, size - index * chunk_bytes)
        while wanted > 0:
            take = min(wanted, buffers[source].nbytes - offset)
            parts.append(buffers[source][offset : offset + take])
            wanted -= take
            offset += take
            if offset == buffers[source].nbytes:
                source, offset = source + 1, 0
        yield b"".join(parts)


class Whole(NamedTuple):
    """A reassembled message: its bytes (a `bytearray` when it came in several chunks, to save a
    copy), the id it answers, and its first chunk's header."""

    data: bytes | bytearray
    reply_to: str | None
    header: dict[str, Any]


@dataclass
class _Partial:
    count: int
    size: int
    reply_to: str | None
    header: dict[str, Any]
    data: bytearray
    seen: set[int] = field(default_factory=set)


class Reassembler:
    """Joins `msg` chunks into whole messages; bounded, so a sender that never finishes
    cannot grow it without limit (the oldest unfinished transfer is dropped). Each chunk is
    copied into the message's place in a buffer allocated once (every chunk but the last holds
    the same number of bytes), so a message is held once while it arrives."""

    def __init__(self, max_partial: int = 32) -> None:
        self.max_partial = max_partial
        self._partial: OrderedDict[str, _Partial] = OrderedDict()
        self.dropped = 0

    def feed(self, frame: Frame) -> tuple[bytes | bytearray, str | None] | None:
        """Add one `msg` frame; returns `(message bytes, reply_to)` when the message is whole."""
        whole = self.feed_whole(frame)
        return None if whole is None else (whole.data, whole.reply_to)

    def feed_whole(self, frame: Frame) -> Whole | None:
        """Add one `msg` frame; returns the `Whole` message (with its header) once complete."""
        h = frame.header
        try:
            transfer, index, count, size = str(h["t"]), int(h["i"]), int(h["n"]), int(h["size"])
        except (KeyError, TypeError, ValueError):
            raise FrameError("msg frame header needs t, i, n, size") from None
        if not (0 < count <= MAX_CHUNKS and 0 <= index < count and 0 <= size <= MAX_MESSAGE_BYTES):
            raise FrameError(f"bad chunk {index}/{count} of {size} bytes")
        reply_to = h.get("re")
        if count == 1:
            if len(frame.body) != size:
                raise FrameError(f"chunk holds {len(frame.body)} bytes, header says {size}")
            return Whole(frame.body, reply_to, h)
        partial = self._partial.get(transfer)
        if partial is None:
            partial = self._partial[transfer] = _Partial(count, size, reply_to, h, bytearray(size))
            while len(self._partial) > self.max_partial:
                self._partial.popitem(last=False)
                self.dropped += 1
        elif partial.count != count or partial.size != size:
            del self._partial[transfer]
            raise FrameError(f"chunk of transfer {transfer[:12]} disagrees on its count or size")
        start = index * len(frame.body) if index < count - 1 else size - len(frame.body)
        if index < count - 1 and (index + 1) * len(frame.body) > size or start < 0:
            del self._partial[transfer]
            raise FrameError(f"chunk {index} of transfer {transfer[:12]} does not fit its {size} bytes")
        partial.data[start : start + len(frame.body)] = frame.body  # straight into place: one copy of the message
        partial.seen.add(index)
        if len(partial.seen) < count:
            return None
        del self._partial[transfer]
        data = partial.data
        return Whole(data, partial.reply_to, partial.header)


def cast_table(heads: dict[str, bytes]) -> bytes:
    """A cast's table: each learner's message head (`actor -> bytes`); the shared content follows."""
    parts = [_U32.pack(len(heads))]
    for actor, head in heads.items():
        name = actor.encode()
        parts += [_U16.pack(len(name)), name, _U32.pack(len(head)), head]
    return b"".join(parts)


def pack_cast(heads: dict[str, bytes], content: bytes) -> bytes:
    """One cast: each learner's message head (`actor -> bytes`) and the content they share."""
    return cast_table(heads) + content


def unpack_cast(data: bytes | bytearray, actor: str) -> bytes | None:
    """`actor`'s whole message (its head + the shared content) from a cast; None if the cast
    does not name it. Raises ValueError on a malformed table."""
    parts = cast_parts(data, actor)
    return None if parts is None else parts[0] + parts[1]


def cast_parts(data: bytes | bytearray, actor: str) -> tuple[bytes, memoryview] | None:
    """`actor`'s message head and a view of the shared content (no copy); None if the cast does
    not name it. Raises ValueError on a malformed table."""
    view, wanted = memoryview(data), actor.encode()
    try:
        (count,) = _U32.unpack_from(view, 0)
        offset, mine = _U32.size, None
        for _ in range(count):
            (name_len,) = _U16.unpack_from(view, offset)
            name = bytes(view[offset + _U16.size : offset + _U16.size + name_len])
            offset += _U16.size + name_len
            (head_len,) = _U32.unpack_from(view, offset)
            offset += _U32.size
            if offset + head_len > len(data):
                raise FrameError("cast table runs past its end")
            if mine is None and name == wanted:
                mine = bytes(view[offset : offset + head_len])
            offset += head_len
    except struct.error:
        raise ValueError("truncated cast table") from None
    if mine is None:
        return None
    return mine, view[offset:]
