"""The versioned JSON envelope every MQTT payload travels in.

`{"id", "type", "time", "source", "subject", "data", "v"}`; anything else is rejected. Inbound
payloads are bounded: at most `MAX_PAYLOAD_BYTES`, every envelope string bounded in length, ids
drawn from a fixed character set.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENVELOPE_VERSION: Literal[1] = 1
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024
"""A reply to this client's own request may be larger (a long job list)."""
ID_PATTERN = r"^[A-Za-z0-9_.:@=+-]{1,200}$"
"""Event and request ids: uuid hex or fact ids such as `job-1:state:running` or `node-1:joined:<ISO time>`."""


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """A message on the bus or an event in the log (then it also has a `seq`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_id, pattern=ID_PATTERN)
    type: str = Field(min_length=1, max_length=100)
    time: datetime = Field(default_factory=utcnow)
    source: str = Field(default="", max_length=200)
    subject: str = Field(default="", max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    v: Literal[1] = ENVELOPE_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class DecodeError(ValueError):
    """An inbound payload that is not valid: not an envelope, or its `data` does not fit its model or
    its topic. `reason` is short and safe to log. The bus drops such a message with one warning."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(payload: bytes | bytearray | str, *, limit: int = MAX_PAYLOAD_BYTES) -> Envelope:
    """Parse and validate one payload of at most `limit` bytes; raises DecodeError with a short reason."""
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > limit:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {limit}")
    try:
        return Envelope.model_validate_json(payload)
    except ValidationError as exc:
        raise DecodeError(_first_error(exc, "payload")) from None


@contextlib.contextmanager
def inbound() -> Iterator[None]:
    """`with inbound(): report = parse(message)`: a ValueError raised inside (pydantic's
    ValidationError is one) is the inbound payload's fault and becomes a DecodeError naming the
    first bad field. Errors outside such a block are bugs: the bus logs them with their traceback."""
    try:
        yield
    except DecodeError:
        raise
    except ValidationError as exc:
        raise DecodeError(_first_error(exc)) from None
    except ValueError as exc:
        raise DecodeError(str(exc)[:300]) from None


def _first_error(exc: ValidationError, what: str = "data") -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first.get("loc", ())) or what
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid {exc.title}: {where}: {first.get('msg')}{more}"
