"""The versioned JSON envelope every MQTT payload travels in.

`{"id", "type", "time", "source", "subject", "data", "v"}`; anything else is rejected.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENVELOPE_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """A message on the bus or an event in the log (then it also has a `seq`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_id, min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    time: datetime = Field(default_factory=utcnow)
    source: str = Field(default="", max_length=200)
    subject: str = Field(default="", max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    v: Literal[1] = ENVELOPE_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class DecodeError(ValueError):
    """A payload that is not a valid envelope; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(payload: bytes | bytearray | str) -> Envelope:
    """Parse and validate one payload; raises DecodeError with a short reason."""
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return Envelope.model_validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise DecodeError(f"invalid envelope: {where}: {first.get('msg')}") from None
