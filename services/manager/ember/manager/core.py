"""The manager's behaviour: answer requests, record reports, drive job transitions.

`Manager` holds the projection (through its `LogFollower`) and the node table, and appends
events with deterministic ids (write to the log first, then publish). It knows nothing of topic
strings or payload decoding: `handlers.py` does that; `app.py` wires and runs it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ember.actions import ServeModel, StopServing, SubmitJob
from ember.bus import Bus
from ember.errors import Conflict, InvalidRequest
from ember.eventlog.base import EventLog, StoredEvent
from ember.events import ActorReport, Event, NodeInfo, NodeStatus, Role, ServingStatus
from ember.follower import LogFollower, append_and_publish
from ember.log import get_logger
from ember.manager import decide, jobs, membership, reports, serving
from ember.nodes import NodeTable
from ember.projection import Projection

log = get_logger("ember.manager")


class Manager:
    """Request answers, report recording and the reconcile pass, over one log and one bus."""

    def __init__(
        self, eventlog: EventLog, bus: Bus, *, tail_lines: int = 20, resync: float = 2.0, deploy_timeout: float = 300.0
    ) -> None:
        self.eventlog = eventlog
        self.bus = bus
        self.tail_lines = tail_lines
        self.deploy_timeout = deploy_timeout
        self.nodes = NodeTable()
        self.server_reports: dict[str, ActorReport] = {}
        """actor -> latest report of a serving actor (they belong to no job)."""
        self.serving_urls: dict[tuple[str, str], str] = {}
        """(node, model) -> the URL its serving actor announced."""
        self.follower = LogFollower(eventlog, bus, self.reconcile, name="manager", resync_every=resync)

    @property
    def projection(self) -> Projection:
        return self.follower.projection

    async def catch_up(self) -> None:
        """Fold what the log holds beyond the projection (read-your-writes for requests)."""
        await self.follower.catch_up()

    async def append(self, event_id: str, subject: str, event: Event) -> StoredEvent:
        envelope = event.envelope(subject, source=self.bus.source, event_id=event_id)
        stored = await append_and_publish(self.eventlog, self.bus, envelope)
        if not stored.duplicate:
            log.info("event.appended", type=type(event).__name__, id=event_id, seq=stored.seq, **_ids(subject, event))
        return stored

    # --- requests --------------------------------------------------------------------------
    async def submit(self, request: SubmitJob, request_id: str) -> dict[str, Any]:
        try:
            job, event_id, event = jobs.submitted(request, request_id)
        except InvalidRequest as exc:
            log.info("job.rejected", request=request_id, code=exc.code, details=exc.details)
            raise
        stored = await self.append(event_id, job, event)
        log.info("job.submitted", job=job, duplicate=stored.duplicate, seq=stored.seq)
        return {"job": job, "state": "submitted"}

    async def cancel(self, job: str) -> dict[str, Any]:
        await self.catch_up()
        event_id, event = jobs.cancelled(jobs.find(self.projection, job))
        stored = await self.append(event_id, job, event)
        await self.catch_up()
        view = jobs.find(self.projection, job)
        if stored.type != type(event).__name__:
            raise Conflict(f"job {job} is already {view.state.value}: {view.reason}")
        return view.summary()

    async def get(self, job: str, rounds: int | None = None) -> dict[str, Any]:
        await self.catch_up()
        return jobs.find(self.projection, job).summary(last_rounds=rounds)

    async def list_jobs(self) -> list[dict[str, Any]]:
        await self.catch_up()
        return jobs.listing(self.projection)

    async def list_nodes(self) -> list[dict[str, Any]]:
        await self.catch_up()
        servers = serving.node_actors(self.projection, self.nodes, self.server_reports, self.serving_urls)
        return membership.listing(self.nodes, self.projection, servers)

    async def serve(self, request: ServeModel, request_id: str) -> dict[str, Any]:
        event_id, event = serving.requested(request, request_id)
        await self.append(event_id, request.model, event)
        await self.catch_up()
        return serving.summary(self.projection.servings.get(request.model), request.model, self.nodes)

    async def stop_serving(self, request: StopServing, request_id: str) -> dict[str, Any]:
        await self.catch_up()
        event_id, event = serving.stopped(request, request_id, self.projection)
        await self.append(event_id, request.model, event)
        await self.catch_up()
        return serving.summary(self.projection.servings.get(request.model), request.model, self.nodes)

    async def list_serving(self) -> list[dict[str, Any]]:
        await self.catch_up()
        return serving.listing(self.projection, self.nodes)

    def record_serving(self, node: str, model: str, status: ServingStatus | None) -> None:
        """A serving actor's announced endpoint (None: it stopped and cleared it)."""
        if status is None:
            self.serving_urls.pop((node, model), None)
        else:
            self.serving_urls[(node, model)] = status.url

    # --- reports ---------------------------------------------------------------------------
    async def record_actor(self, report: ActorReport) -> None:
        if report.role == Role.SERVER:
            self.server_reports[report.actor] = report
            return
        bound = log.bind(job=report.job, node=report.node, actor=report.actor, state=report.state.value)
        decision = reports.actor_event(report, self.projection.jobs.get(report.job))
        if isinstance(decision, reports.Skip):
            await self.catch_up()  # the placement may be in the log but not yet in our view
            decision = reports.actor_event(report, self.projection.jobs.get(report.job))
        if isinstance(decision, reports.Skip):
            (bound.debug if decision.quiet else bound.info)("actor_report.dropped", reason=decision.reason)
            return
        event_id, event = decision
        await self.append(event_id, report.job, event)

    async def record_progress(self, job_id: str, report: reports.Progress, source: str = "") -> None:
        """A round the aggregator finished (`{job}:round:{n}`), a checkpoint it stored, or its
        final result (`{job}:result`)."""
        decision = reports.progress_event(report, self.projection.jobs.get(job_id), job_id, source)
        if isinstance(decision, reports.Skip):
            await self.catch_up()
            decision = reports.progress_event(report, self.projection.jobs.get(job_id), job_id, source)
        if isinstance(decision, reports.Skip):
            log.info("progress.dropped", job=job_id, round=getattr(report, "round", None), reason=decision.reason)
            return
        event_id, event = decision
        await self.append(event_id, job_id, event)

    async def record_node(self, node: str, *, info: NodeInfo | None = None, status: NodeStatus | None = None) -> None:
        if info is not None:
            self.nodes.update_info(info)
        if status is not None:
            self.nodes.update_status(status)
        await self.catch_up()
        decision = membership.membership_event(self.nodes, node, self.projection)
        if decision is not None:
            await self.append(decision[0], node, decision[1])

    # --- the state machine -----------------------------------------------------------------
    async def reconcile(self, projection: Projection, _new: list[StoredEvent]) -> None:
        """Level-triggered: append every transition the projection says is owed."""
        for job in list(projection.jobs.values()):
            if job.state.terminal:
                continue
            now = datetime.now(UTC)
            for event_id, event in decide.decide(job, now=now, deploy_timeout=self.deploy_timeout):
                await self.append(event_id, job.id, event)


def _ids(subject: str, event: Event) -> dict[str, str]:
    """Log context for an event: its job or node, and its actor when it has one."""
    out = {"node": subject} if event.aggregate == "node" else {"job": subject}
    actor = getattr(event, "actor", None)
    if isinstance(actor, str):
        out["actor"] = actor
    return out
