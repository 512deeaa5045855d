"""The answering side of requests: one `Responder` per bus that serves actions (`Bus.serve`).

A request on `req/{action}` is checked in order (topic parameter, envelope, known action, `data`
against the action's request model); the first failure is dropped with one warning, counted, and
answered with an `invalid_request` error naming it. A valid request runs its handler, whose result
is checked against the action's reply model: an `EmberError` becomes its typed error, anything else
(including a result that does not fit the model) is a bug, logged with its traceback and answered
with `internal`. Replies go only to `{root}/reply/{client}` topics, so a request cannot make the
service publish anywhere else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ember import topics
from ember.actions import REPLY_TYPE, Action, Payload
from ember.envelope import DecodeError, Envelope, decode
from ember.errors import EmberError, InvalidRequest, to_reply
from ember.metrics import REQUEST_SECONDS

if TYPE_CHECKING:
    from ember.bus import Bus, Message

R = TypeVar("R", bound=Payload)
RequestHandler = Callable[[R, Envelope], Awaitable[Any]]
"""Gets the validated request and its envelope; returns a value of the action's reply model."""


class Responder:
    """Answers the requests of the actions in `served` on `bus`."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.served: dict[str, tuple[Action[Any], RequestHandler[Any]]] = {}

    async def on_request(self, message: Message) -> None:
        """Handler of the bus's `req/+` subscription (raw: the envelope is decoded here)."""
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        if response_topic and topics.REPLY.match(self.bus.root, response_topic) is None:
            reason = f"response topic {response_topic[:100]!r} is not under {self.bus.root}/reply/"
            self.bus.drop(message.topic, reason, len(message.payload))
            return
        envelope: Envelope | None = None
        try:
            envelope = self._envelope(message)
            action, handler = self._action(message.params["action"])
            request = action.parse(envelope.data)
        except InvalidRequest as exc:
            self.bus.drop(message.topic, exc.message, len(message.payload))
            await self._reply(props, envelope.id if envelope else "", {"ok": False, "error": to_reply(exc)})
            return
        started = time.perf_counter()
        try:
            data: dict[str, Any] = {"ok": True, "result": action.result(await handler(request, envelope))}
        except EmberError as exc:
            data = {"ok": False, "error": to_reply(exc)}
        except Exception as exc:
            self.bus.stats["handler_errors"] += 1
            self.bus.log.exception("bus.request_failed", action=action.name)
            data = {"ok": False, "error": to_reply(exc)}
        outcome = "ok" if data["ok"] else "error"
        REQUEST_SECONDS.labels(action=action.name, outcome=outcome).observe(time.perf_counter() - started)
        await self._reply(props, envelope.id, data)

    @staticmethod
    def _envelope(message: Message) -> Envelope:
        if reason := topics.invalid_param(message.params):
            raise InvalidRequest(f"invalid request: {reason}", details=[{"field": "action", "reason": reason}])
        try:
            return decode(message.payload)
        except DecodeError as exc:
            raise InvalidRequest(f"invalid request: {exc.reason}", details=[{"field": "(envelope)", "reason": exc.reason}]) from None

    def _action(self, name: str) -> tuple[Action[Any], RequestHandler[Any]]:
        served = self.served.get(name)
        if served is None:
            reason = f"unknown action {name!r}; known: {', '.join(sorted(self.served))}"
            raise InvalidRequest(f"invalid request: {reason}", details=[{"field": "action", "reason": reason}])
        return served

    async def _reply(self, props: Any, subject: str, data: dict[str, Any]) -> None:
        """Publish a reply on the request's response topic (none: the requester wants no reply)."""
        response_topic = getattr(props, "ResponseTopic", None)
        if not response_topic:
            return
        reply_props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(props, "CorrelationData", None)
        if correlation:
            reply_props.CorrelationData = correlation
        reply = self.bus.envelope(REPLY_TYPE, json.loads(json.dumps(data, default=str)), subject=subject)
        await self.bus.publish(response_topic, reply, properties=reply_props)
