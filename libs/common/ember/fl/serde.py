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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.envelope import DecodeError

MAGIC = b"EMB1"
_PREFIX = struct.Struct(">4sH")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
CHUNK_BYTES = 512 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024 * 1024
MAX_CHUNKS = MAX_MESSAGE_BYTES // CHUNK_BYTES
Kind = Literal["msg", "ready", "gone", "ping", "done"]
KINDS = ("msg", "ready", "gone", "ping", "done")


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


def chunk_message(data: bytes, *, reply_to: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Split a serialised Flower message into `msg` frames (one if it is small)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    transfer = uuid.uuid4().hex
    count = max(1, -(-len(data) // chunk_bytes))
    for index in range(count):
        header: dict[str, Any] = {"t": transfer, "i": index, "n": count, "size": len(data)}
        if reply_to is not None:
            header["re"] = reply_to
        yield Frame("msg", header, data[index * chunk_bytes : (index + 1) * chunk_bytes]).to_bytes()


@dataclass
class _Partial:
    count: int
    size: int
    reply_to: str | None
    parts: dict[int, bytes] = field(default_factory=dict)


class Reassembler:
    """Joins `msg` chunks into whole messages; bounded, so a sender that never finishes
    cannot grow it without limit (the oldest unfinished transfer is dropped)."""

    def __init__(self, max_partial: int = 32) -> None:
        self.max_partial = max_partial
        self._partial: OrderedDict[str, _Partial] = OrderedDict()
        self.dropped = 0

    def feed(self, frame: Frame) -> tuple[bytes, str | None] | None:
        """Add one `msg` frame; returns `(message bytes, reply_to)` when the message is whole."""
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
            return frame.body, reply_to
        partial = self._partial.get(transfer)
        if partial is None:
            partial = self._partial[transfer] = _Partial(count, size, reply_to)
            while len(self._partial) > self.max_partial:
                self._partial.popitem(last=False)
                self.dropped += 1
        elif partial.count != count or partial.size != size:
            del self._partial[transfer]
            raise FrameError(f"chunk of transfer {transfer[:12]} disagrees on its count or size")
        partial.parts[index] = frame.body
        if len(partial.parts) < count:
            return None
        del self._partial[transfer]
        data = b"".join(partial.parts[i] for i in range(count))
        if len(data) != size:
            raise FrameError(f"transfer {transfer[:12]} joined to {len(data)} bytes, header says {size}")
        return data, partial.reply_to


def pack_cast(heads: dict[str, bytes], content: bytes) -> bytes:
    """One cast: each learner's message head (`actor -> bytes`) and the content they share."""
    parts = [_U32.pack(len(heads))]
    for actor, head in heads.items():
        name = actor.encode()
        parts += [_U16.pack(len(name)), name, _U32.pack(len(head)), head]
    parts.append(content)
    return b"".join(parts)


def unpack_cast(data: bytes, actor: str) -> bytes | None:
    """`actor`'s whole message (its head + the shared content) from a cast; None if the cast
    does not name it. Raises ValueError on a malformed table."""
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
    return mine + data[offset:]
