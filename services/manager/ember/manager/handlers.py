"""Topic -> function for the manager. Thin: decode, bind ids, call `Manager`, let errors out.

Requests: the bus validates each against its action's model (`ember.actions`) and turns an
`EmberError` into a typed error reply. Reports: a payload whose `data` does not validate (parsed
inside `inbound()`) is logged, counted (`bus.stats["dropped_invalid"]`) and dropped by the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ember import actions, topics
from ember.actions import GetJob, JobRef, NoArguments, SubmitJob
from ember.bus import Bus, Message
from ember.envelope import Envelope, inbound
from ember.errors import Unavailable
from ember.manager import reports
from ember.manager.core import Manager
from ember.nodes import parse_info, parse_status


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

    async def submit(request: SubmitJob, envelope: Envelope) -> Any:
        async with gate.enter():
            return await manager.submit(request, envelope.id)

    async def cancel(request: JobRef, _envelope: Envelope) -> Any:
        async with gate.enter():
            return await manager.cancel(request.job)

    async def get(request: GetJob, _envelope: Envelope) -> Any:
        async with gate.enter():
            return await manager.get(request.job, request.rounds)

    async def list_jobs(_request: NoArguments, _envelope: Envelope) -> Any:
        async with gate.enter():
            return await manager.list_jobs()

    async def list_nodes(_request: NoArguments, _envelope: Envelope) -> Any:
        async with gate.enter():
            return await manager.list_nodes()

    bus.serve(actions.JOBS_SUBMIT, submit)
    bus.serve(actions.JOBS_CANCEL, cancel)
    bus.serve(actions.JOBS_GET, get)
    bus.serve(actions.JOBS_LIST, list_jobs)
    bus.serve(actions.NODES_LIST, list_nodes)

    async def on_actor_state(message: Message) -> None:
        with inbound():
            report = reports.parse_actor_report(message.body, message.params)
        await manager.record_actor(report)

    async def on_progress(message: Message) -> None:
        with inbound():
            progress = reports.parse_progress(message.body)
        await manager.record_progress(message.params["job"], progress)

    async def on_info(message: Message) -> None:
        with inbound():
            info = parse_info(message.body, message.params)
        await manager.record_node(message.params["node"], info=info)

    async def on_status(message: Message) -> None:
        with inbound():
            status = parse_status(message.body, message.params)
        await manager.record_node(message.params["node"], status=status)

    bus.subscribe(topics.ACTOR_STATE, on_actor_state)
    bus.subscribe(topics.JOB_PROGRESS, on_progress)
    bus.subscribe(topics.NODE_INFO, on_info)
    bus.subscribe(topics.NODE_STATUS, on_status)
