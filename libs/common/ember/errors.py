"""One error model: a root exception with typed subclasses, each with a stable `code`.

`to_reply` is the one place that turns an exception into a public error (detail goes to the log).
"""

from __future__ import annotations

from typing import Any


class EmberError(Exception):
    code = "internal"
    exit_code = 1

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class InvalidRequest(EmberError):
    code = "invalid_request"
    exit_code = 2


class InvalidJobSpec(InvalidRequest):
    """`details` is a list of `{"field": "training.rounds", "reason": "..."}`."""

    code = "invalid_job_spec"


class InvalidSettings(InvalidRequest):
    """A service's settings (`EMBER_*` variables or flags) do not validate."""

    code = "invalid_settings"


class NotFound(EmberError):
    code = "not_found"
    exit_code = 3


class Conflict(EmberError):
    code = "conflict"
    exit_code = 4


class RequestTimeout(EmberError):
    code = "timeout"
    exit_code = 5


class Unavailable(EmberError):
    code = "unavailable"
    exit_code = 6


_BY_CODE = {cls.code: cls for cls in (EmberError, InvalidRequest, InvalidJobSpec, InvalidSettings, NotFound, Conflict, RequestTimeout, Unavailable)}


def to_reply(exc: BaseException) -> dict[str, Any]:
    """Public form of an exception; unexpected ones become `internal` without their detail."""
    if isinstance(exc, EmberError):
        return exc.to_dict()
    return {"code": "internal", "message": "internal error (see the service log)"}


def from_reply(error: dict[str, Any]) -> EmberError:
    cls = _BY_CODE.get(str(error.get("code")), EmberError)
    exc = cls(str(error.get("message", "")), details=error.get("details"))
    exc.code = str(error.get("code", "internal"))
    return exc
