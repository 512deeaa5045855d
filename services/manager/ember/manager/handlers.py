"""Topic -> function for the manager. Thin: decode, bind ids, call `Manager`, let errors out.

The bus turns an `EmberError` from a request handler into a typed error reply, and logs, counts
(`bus.stats["dropped_invalid"]`) and drops a payload whose `data` does not validate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ember import topics
from ember.bus import Bus, Message
from ember.envelope import Envelope
from ember.errors import Unavailable
from ember.manager import jobs, reports
from ember.manager.core import Manager
from ember.manager.nodes import parse_info, parse_status


class Gate:
    """Counts in-flight requests and refuses new ones once closed (graceful SIGTERM)."""

    def __init__(self) -> None:
        self.open = True
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if not self.open:
            raise Unavailable("the manager is shutting down; retry shortly")
        self.in_flight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


def register(bus: Bus, manager: Manager, gate: Gate) -> None:
    """Declare every request and subscription of the manager on `bus` (before it starts)."""

    def request(fn: Callable[[Envelope], Awaitable[Any]]) -> Callable[[Envelope], Awaitable[Any]]:
        async def handle(envelope: Envelope) -> Any:
            async with gate.enter():
                return await fn(envelope)

        return handle

    async def submit(envelope: Envelope) -> Any:
        return await manager.submit(jobs.parse_request(jobs.SubmitRequest, envelope.data), envelope.id)

    async def cancel(envelope: Envelope) -> Any:
        return await manager.cancel(jobs.parse_request(jobs.JobRef, envelope.data).job)

    async def get(envelope: Envelope) -> Any:
        request = jobs.parse_request(jobs.GetRequest, envelope.data)
        return await manager.get(request.job, request.rounds)

    async def list_jobs(envelope: Envelope) -> Any:
        jobs.parse_request(jobs.Empty, envelope.data)
        return await manager.list_jobs()

    async def list_nodes(envelope: Envelope) -> Any:
        jobs.parse_request(jobs.Empty, envelope.data)
        return await manager.list_nodes()

    for action, fn in (
        ("jobs.submit", submit),
        ("jobs.cancel", cancel),
        ("jobs.get", get),
        ("jobs.list", list_jobs),
        ("nodes.list", list_nodes),
    ):
        bus.serve(action, request(fn))

    async def on_actor_state(message: Message) -> None:
        assert message.envelope is not None
        await manager.record_actor(reports.parse_actor_report(message.envelope, message.params))

    async def on_progress(message: Message) -> None:
        assert message.envelope is not None
        await manager.record_progress(message.params["job"], reports.parse_progress(message.envelope), message.envelope.source)

    async def on_info(message: Message) -> None:
        assert message.envelope is not None
        await manager.record_node(message.params["node"], info=parse_info(message.envelope, message.params))

    async def on_status(message: Message) -> None:
        assert message.envelope is not None
        await manager.record_node(message.params["node"], status=parse_status(message.envelope, message.params))

    bus.subscribe(topics.ACTOR_STATE, on_actor_state)
    bus.subscribe(topics.JOB_PROGRESS, on_progress)
    bus.subscribe(topics.NODE_INFO, on_info)
    bus.subscribe(topics.NODE_STATUS, on_status)
