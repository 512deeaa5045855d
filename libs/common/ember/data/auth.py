"""Bearer-token authentication of Flight calls: the header clients send and the server middleware that checks it."""

from __future__ import annotations

import hmac

import pyarrow.flight as flight

HEADER = "authorization"


def bearer_headers(token: str) -> list[tuple[bytes, bytes]]:
    """Client-side call headers carrying the node token."""
    return [(HEADER.encode(), f"Bearer {token}".encode())]


class BearerTokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses any call whose `authorization` header is not `Bearer <token>`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        if not token:
            raise ValueError("the mldata token must not be empty")
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str | bytes]]) -> None:
        values = headers.get(HEADER) or []
        offered = values[0] if values else b""
        if isinstance(offered, str):
            offered = offered.encode()
        if len(values) != 1 or not hmac.compare_digest(offered, self._expected):
            raise flight.FlightUnauthenticatedError("missing or invalid mldata token (authorization: Bearer <token>)")
        return None
