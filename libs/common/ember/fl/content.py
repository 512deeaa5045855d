"""Never resend what a learner already has: content references on the FL topics.

A message's content travels as *pieces*, one protobuf piece per record of its `RecordDict`
(`flwr_compat.message_pieces`; concatenated, they parse as the whole content). Each `msg` chunk
of a transfer carries the piece table in its header field `c`: one `[digest, length, inline]`
per piece, in order (`digest` is None for pieces under `PIECE_MIN_BYTES`, which always travel
inline). The transfer's body holds the head followed by the inline pieces only; a piece with
`inline` false is a *reference*: the learner takes it from the content it received last.

- `ContentBook` (aggregator): what each learner was last sent, by digest, and which pieces of a
  new message can therefore be references (every addressed learner has them). It keeps the full
  pieces of recent transfers that used references, to resend them.
- `ContentCache` (learner): the big pieces of the last content it received. A message whose
  reference it cannot resolve (the learner restarted, or was newly placed) is not handled: the
  learner sends a `miss` frame naming the transfer and the aggregator resends its message in full.

FedAvg's evaluate push and the next round's train push carry the same model with a different
config record: the model's piece is referenced, the config travels inline.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

PIECE_MIN_BYTES = 64 * 1024
"""Pieces smaller than this are never referenced (hashing them costs more than sending them)."""
KEEP_TRANSFERS = 16
"""Transfers with references whose full pieces the aggregator keeps for a `miss`."""

Table = list[list[Any]]


def digest(piece: bytes | memoryview) -> str:
    return hashlib.sha256(piece).hexdigest()[:32]


def piece_table(pieces: Sequence[bytes]) -> Table:
    """Every piece inline: `[digest or None, length, True]` each."""
    return [[digest(p) if len(p) >= PIECE_MIN_BYTES else None, len(p), True] for p in pieces]


class ContentBook:
    """The aggregator's view of what each learner holds (thread-safe: the strategy's thread
    plans sends, the event loop answers misses)."""

    def __init__(self) -> None:
        self._has: dict[str, set[str]] = {}
        self._kept: OrderedDict[str, dict[str, tuple[bytes, list[bytes]]]] = OrderedDict()
        self._lock = threading.Lock()
        self._digests: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        """Digests of recent pieces by identity (a piece object sent again is not hashed again)."""
        self.enabled = True
        """False: every piece goes inline (references off, e.g. to compare runs)."""
        self.referenced_bytes = 0
        """Bytes not sent because the learners had them (a counter for stats)."""

    def plan(self, actors: Sequence[str], pieces: Sequence[bytes], table: Table | None = None) -> tuple[Table, list[bytes]]:
        """The piece table and the inline pieces for `pieces` sent to `actors` (records that the
        actors now hold them). Pass `table` (from `piece_table`) to reuse digests."""
        table = [list(entry) for entry in (table or self.table(pieces))]
        with self._lock:
            held = [self._has.get(actor, set()) for actor in actors]
            inline = []
            for entry, piece in zip(table, pieces, strict=True):
                if self.enabled and entry[0] is not None and held and all(entry[0] in h for h in held):
                    entry[2] = False
                    self.referenced_bytes += len(piece)
                else:
                    inline.append(piece)
            now = {entry[0] for entry in table if entry[0] is not None}
            for actor in actors:
                self._has[actor] = now
        return table, inline

    def table(self, pieces: Sequence[bytes]) -> Table:
        """`piece_table(pieces)`, reusing the digest of a piece object hashed recently."""
        table = []
        for piece in pieces:
            known = self._digests.get(id(piece))
            if known is not None and known[0] is piece:
                table.append([known[1], len(piece), True])
                continue
            entry = piece_table([piece])[0]
            if entry[0] is not None:
                self._digests[id(piece)] = (piece, entry[0])
                while len(self._digests) > KEEP_TRANSFERS:
                    self._digests.popitem(last=False)
            table.append(entry)
        return table

    def keep(self, transfer: str, messages: dict[str, tuple[bytes, list[bytes]]]) -> None:
        """Remember the full `(head, pieces)` of each actor's message in a transfer with references."""
        with self._lock:
            self._kept[transfer] = messages
            while len(self._kept) > KEEP_TRANSFERS:
                self._kept.popitem(last=False)

    def full(self, transfer: str, actor: str) -> tuple[bytes, list[bytes], Table] | None:
        """`actor`'s message of `transfer` in full (head, pieces, all-inline table), or None if
        it is no longer kept; the actor is recorded as holding its pieces."""
        with self._lock:
            message = self._kept.get(transfer, {}).get(actor)
        if message is None:
            return None
        head, pieces = message
        table = piece_table(pieces)
        with self._lock:
            self._has[actor] = {entry[0] for entry in table if entry[0] is not None}
        return head, pieces, table


class ContentCache:
    """A learner's copy of the big pieces of the last content it received."""

    def __init__(self) -> None:
        self._pieces: dict[str, bytes | memoryview] = {}

    def resolve(self, data: bytes | bytearray | memoryview, table: Table | None, *, head: bytes = b"") -> bytes | None:
        """The whole message from a received one (`head + data`, the inline pieces ending `data`)
        and its piece table, joined once; None when it references a piece this learner does not
        hold. Without a table, `head + data`."""
        if not table:
            return head + data if head else bytes(data)
        try:
            inline_bytes = sum(int(length) for _, length, inline in table if inline)
            if inline_bytes > len(data):
                raise ValueError("piece table longer than the message")
            view = memoryview(data)
            offset = len(data) - inline_bytes
            parts: list[bytes | memoryview] = [head, view[:offset]]
            kept: dict[str, bytes | memoryview] = {}
            for key, length, inline in table:
                if inline:
                    piece: bytes | memoryview = view[offset : offset + int(length)]
                    offset += int(length)
                else:
                    held = self._pieces.get(str(key))
                    if held is None or len(held) != int(length):
                        return None
                    piece = held
                parts.append(piece)
                if key is not None:
                    kept[str(key)] = piece
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad piece table: {exc}") from None
        self._pieces = kept
        return b"".join(parts)
