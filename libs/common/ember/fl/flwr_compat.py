"""Every Flower internal Ember touches, in one place (tested by `tests/test_fl_compat.py`).

Ember drives Flower's public objects (`Grid`, `ServerApp`, `ClientApp`, `Message`, the
strategies in `flwr.serverapp.strategy`), but replacing Flower's transport needs a few
things that are not public API. They are listed here and nowhere else, so a flwr upgrade
breaks one module and one contract test, loudly:

- `flwr.supercore.task_identity.TaskIdentity`: the process's task identity that
  `Message(...)` reads for `run_id`, `src_node_id` and `src_task_id`. Flower's own
  runtimes set it from the SuperLink's task input; Ember sets it at actor start.
- `Metadata.__dict__["_message_id"]`: Flower's grids assign message ids this way
  (`InMemoryGrid.push_messages`); the public `Metadata.message_id` has no setter.
- `flwr.common.serde.message_to_proto` / `message_from_proto` and
  `flwr.proto.message_pb2.Message`: Flower's protobuf serialisation of a whole `Message`
  (metadata, content and error); `flwr.common.serde.metadata_to_proto` and
  `recorddict_to_proto`, its two halves, to serialise a content shared by several messages once.
- `flwr.supercore.run.Run.create_empty`: the `Run` a `Grid` reports through `grid.run`.
- `flwr.common.constant.SUPERLINK_NODE_ID` and `ErrorCode`: the aggregator's node id and
  the error codes of replies that never came.
- The `[tool.flwr.app.config]` table of a Flower app's `pyproject.toml`, flattened with `.`,
  is its `run_config` (what `flwr run` passes to `Context.run_config`).

One interpreter fault is worked around here too, because Flower's `Array.numpy()` is where Ember meets
it: `np.load` parses each array's header with `ast.literal_eval`, and CPython 3.11 can fail two threads
that build ASTs at once with `SystemError: AST constructor recursion depth mismatch`
(python/cpython#106905; seen here on 3.11.7). Learners and the aggregator decode arrays on the event
loop and in worker threads, so on 3.11 `ast.literal_eval` is serialised process-wide.
"""

from __future__ import annotations

import ast
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto, metadata_to_proto, recorddict_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

def serialise_literal_eval() -> None:
    """On CPython 3.11, make `ast.literal_eval` take a process-wide lock (idempotent)."""
    if sys.version_info >= (3, 12) or getattr(ast.literal_eval, "_ember_serialised", False):
        return
    plain = ast.literal_eval
    lock = threading.Lock()

    def literal_eval(node_or_string: Any) -> Any:
        with lock:
            return plain(node_or_string)

    literal_eval._ember_serialised = True  # type: ignore[attr-defined]
    ast.literal_eval = literal_eval


serialise_literal_eval()

TESTED_FLWR = (">=1.41", "<1.42")
"""The flwr range this module was written and tested against (pyproject pins the same)."""

AGGREGATOR_NODE_ID = SUPERLINK_NODE_ID
NODE_UNAVAILABLE = ErrorCode.NODE_UNAVAILABLE
CLIENT_APP_RAISED_EXCEPTION = ErrorCode.CLIENT_APP_RAISED_EXCEPTION

__all__ = [
    "AGGREGATOR_NODE_ID",
    "CLIENT_APP_RAISED_EXCEPTION",
    "NODE_UNAVAILABLE",
    "TESTED_FLWR",
    "error_reply",
    "flwr_version",
    "make_run",
    "message_from_bytes",
    "message_to_bytes",
    "message_parts",
    "message_pieces",
    "PieceMemo",
    "messages_to_bytes",
    "run_config_from_dir",
    "set_message_id",
    "set_task_identity",
]


def flwr_version() -> str:
    return _dist_version("flwr")


def set_task_identity(*, run_id: int, node_id: int, task_id: int = 1) -> None:
    """Set the identity `Message(...)` stamps on instruction messages of this process."""
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


def set_message_id(message: Message, message_id: str) -> None:
    """Give a message its id, as Flower's grids do when they push it."""
    message.metadata.__dict__["_message_id"] = message_id


def message_to_bytes(message: Message) -> bytes:
    """A whole Flower `Message` (metadata, content or error) as protobuf bytes."""
    return message_to_proto(message).SerializeToString()


def message_parts(messages: Sequence[Message]) -> list[tuple[bytes, bytes]]:
    """Each message as `(head, body)` protobuf bytes whose concatenation is `message_to_bytes`;
    a content shared by several messages is serialised once and is the same `body` object.

    Flower's strategies send one `RecordDict` (the global model) to every node; serialising it
    for each is N times the work for the same bytes. Protobuf bytes of two messages concatenated
    parse as their merge, so a message with content is its own metadata's bytes (`head`) followed
    by the content's (`body`); one with an error or no content is all `head` (checked byte for
    byte against `message_to_bytes` by the contract test)."""
    shared: dict[int, bytes] = {}
    out = []
    for message in messages:
        if message.has_error() or not message.has_content():
            out.append((message_to_bytes(message), b""))
            continue
        key = id(message.content)
        if key not in shared:
            shared[key] = ProtoMessage(content=recorddict_to_proto(message.content)).SerializeToString()
        out.append((ProtoMessage(metadata=metadata_to_proto(message.metadata)).SerializeToString(), shared[key]))
    return out


class PieceMemo:
    """The serialised pieces of the last few `ArrayRecord`s sent, by identity: a record sent
    again unchanged (FedAvg's evaluate push and the next round's train push share one) is not
    serialised again. The key is the record and each of its `Array`s with their fields and data
    object (bytes, immutable), all held alive by the memo so their ids stay theirs."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._memo: dict[tuple[Any, ...], tuple[list[Any], bytes]] = {}

    def piece(self, name: str, record: Any) -> bytes:
        if not isinstance(record, ArrayRecord):
            return ProtoMessage(content=recorddict_to_proto(RecordDict({name: record}))).SerializeToString()
        held = [record, *record.values(), *(a.data for a in record.values())]
        key = (name, id(record), *((k, id(a), a.dtype, tuple(a.shape), a.stype, id(a.data)) for k, a in record.items()))
        hit = self._memo.get(key)
        if hit is not None:
            return hit[1]
        piece = ProtoMessage(content=recorddict_to_proto(RecordDict({name: record}))).SerializeToString()
        self._memo[key] = (held, piece)
        while len(self._memo) > self.size:
            self._memo.pop(next(iter(self._memo)))
        return piece


def message_pieces(messages: Sequence[Message], memo: PieceMemo | None = None) -> list[tuple[bytes, list[bytes]]]:
    """Like `message_parts`, with each content as one protobuf piece per record (their
    concatenation parses as the whole content: a repeated field's items append), so a record
    sent before (the model) can be referenced apart from one that changed (the config). A
    content shared by several messages is serialised once and is the same list object; with a
    `memo`, a record sent before unchanged is not serialised again (the same bytes object)."""
    memo = memo or PieceMemo(0)
    shared: dict[int, list[bytes]] = {}
    out: list[tuple[bytes, list[bytes]]] = []
    for message in messages:
        if message.has_error() or not message.has_content():
            out.append((message_to_bytes(message), []))
            continue
        key = id(message.content)
        if key not in shared:
            shared[key] = [memo.piece(name, record) for name, record in message.content.items()]
        out.append((ProtoMessage(metadata=metadata_to_proto(message.metadata)).SerializeToString(), shared[key]))
    return out


def messages_to_bytes(messages: Sequence[Message]) -> list[bytes]:
    """`message_to_bytes` of each message, a content shared by several of them serialised once."""
    return [head + body for head, body in message_parts(messages)]


def message_from_bytes(data: bytes) -> Message:
    """Inverse of `message_to_bytes`; raises ValueError on bytes that are not a Message."""
    proto = ProtoMessage()
    try:
        proto.ParseFromString(data)
        return message_from_proto(proto)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"not a Flower message: {type(exc).__name__}: {exc}") from None


def make_run(run_id: int) -> Run:
    return Run.create_empty(run_id)


def error_reply(message: Message, code: int, reason: str) -> Message:
    """The reply a node that never answered would have produced (public API)."""
    return Message(Error(code=code, reason=reason), reply_to=message)


def run_config_from_dir(app_dir: str | Path) -> dict[str, Any]:
    """A Flower app's run config (`[tool.flwr.app.config]` of its pyproject.toml), flattened
    with `.` like Flower does; {} when the folder has none. Read directly (Flower's own loader
    insists on a complete FAB manifest)."""
    import tomllib

    path = Path(app_dir) / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        config = tomllib.loads(path.read_text())["tool"]["flwr"]["app"].get("config", {})
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}

    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    return flat(config)
