"""Reconciles a node's desired state with the actors its runtime runs, and reports them.

Level-triggered and idempotent: `apply(desired)` starts every desired actor this node has not
started yet, stops every actor that is no longer desired, and ignores a revision older than
the last one applied from the same notifier run (`DesiredState.epoch`); a state of another
epoch is applied as it comes, so no revision, however far ahead, holds the node past the
notifier's next publish. Actors run once: an actor that ended stays ended while it is desired.
Each actor has one watcher task that reports `[pulling ->] starting -> running -> exited | failed`
(retained; `pulling` with bytes done/total while its image is fetched) and streams new log
lines. Nothing here knows about MQTT: reports and log lines go
through the two callables the app passes in.

Reports are *held* (kept as each actor's latest, not published) from the start and again after
each reconnect, until the app `release()`s them: a node that comes back first applies its
desired state and stops what is no longer desired (`settle()`), so an actor fenced while the
node was away is never reported `running` again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ember.events import ActorReport, ActorSpec, ActorState, DesiredState
from ember.flamelet.logtail import LogTail, last_lines
from ember.flamelet.runtime import ActorRun, PullProgress, Runtime, StartFailed
from ember.log import get_logger

TAIL_LINES = 20
LOG_BATCH = 200
PULL_REPORT_INTERVAL = 0.5
"""At most one `pulling` report per actor this often (the last one always goes out)."""

PublishReport = Callable[[ActorReport], Awaitable[None]]
PublishLog = Callable[[ActorSpec, list[str]], Awaitable[None]]


@dataclass
class Managed:
    """One actor this node runs or ran, with its latest report."""

    spec: ActorSpec
    report: ActorReport
    run: ActorRun | None = None
    adopted: bool = False
    stopping: bool = False
    """No longer desired: stop it, then forget it."""
    shutdown: bool = False
    """Stopped because the flamelet shuts down (stays recorded; its report stays retained)."""
    watcher: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Supervisor:
    def __init__(
        self,
        node: str,
        runtime: Runtime,
        *,
        publish_report: PublishReport,
        publish_log: PublishLog,
        clear_report: Callable[[ActorSpec], Awaitable[None]] | None = None,
        grace: float = 2.0,
        log_interval: float = 0.5,
    ) -> None:
        self.node = node
        self.runtime = runtime
        self.actors: dict[str, Managed] = {}
        self.revision = -1
        self.epoch = ""
        self.grace = grace
        self.log_interval = log_interval
        self._publish_report = publish_report
        self._publish_log = publish_log
        self._clear_report = clear_report
        self._tg: asyncio.TaskGroup | None = None
        self._closing = False
        self._held = True
        self.log = get_logger("ember.flamelet", node=node)

    # --- start-up ----------------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take over what an earlier flamelet on this node started (running or ended since)."""
        for run in await self.runtime.adopt():
            managed = Managed(run.spec, self._report(run.spec, ActorState.RUNNING, pid=run.pid), run=run, adopted=True)
            managed.started.set()
            self.actors[run.spec.actor] = managed
            ended = run.finished
            self.log.info("flamelet.adopted", actor=run.spec.actor, job=run.spec.job, pid=run.pid,
                          ended=ended.reason if ended else None)

    def bind(self, tg: asyncio.TaskGroup) -> None:
        """Start watching (in the app's TaskGroup) every adopted actor."""
        self._tg = tg
        for managed in self.actors.values():
            managed.watcher = tg.create_task(self._watch(managed), name=f"watch:{managed.spec.actor}")

    # --- reconcile ---------------------------------------------------------------------------
    async def apply(self, desired: DesiredState) -> bool:
        """Reconcile with `desired`; False (and nothing done) when its revision is stale."""
        if self._closing or (desired.epoch == self.epoch and desired.revision < self.revision):
            return False
        self.revision, self.epoch = desired.revision, desired.epoch
        wanted = {spec.actor: spec for spec in desired.actors}
        assert self._tg is not None, "bind() the supervisor before applying a desired state"
        for actor, spec in wanted.items():
            if actor not in self.actors:
                managed = Managed(spec, self._report(spec, ActorState.PENDING))
                self.actors[actor] = managed
                managed.watcher = self._tg.create_task(self._watch(managed), name=f"watch:{actor}")
        for actor, managed in list(self.actors.items()):
            if actor not in wanted and not managed.stopping:
                managed.stopping = True
                if managed.report.state.terminal:
                    await self._forget(managed)
                else:
                    self._tg.create_task(self._stop(managed), name=f"stop:{actor}")
        return True

    async def _stop(self, managed: Managed) -> None:
        await managed.started.wait()
        if managed.run is not None:
            self.log.info("flamelet.stopping", actor=managed.spec.actor, job=managed.spec.job, grace=self.grace)
            await managed.run.stop(self.grace)

    async def _forget(self, managed: Managed) -> None:
        self.actors.pop(managed.spec.actor, None)
        await self.runtime.forget(managed.spec.actor)
        if self._clear_report is not None:
            await self._clear_report(managed.spec)

    # --- one actor ---------------------------------------------------------------------------
    async def _watch(self, managed: Managed) -> None:
        spec = managed.spec
        log = self.log.bind(actor=spec.actor, job=spec.job)
        if managed.run is None:
            try:
                await self.runtime.prepare(spec, self._pull_progress(managed))
                await self._set(managed, ActorState.STARTING)
                managed.run = await self.runtime.start(spec)
            except StartFailed as exc:
                managed.started.set()
                log.warning("flamelet.start_failed", reason=exc.message)
                await self._set(managed, ActorState.FAILED, reason=exc.message)
                return await self._done(managed)
            managed.started.set()
            log.info("flamelet.started", pid=managed.run.pid, module=spec.module)
        run = managed.run
        ended = asyncio.ensure_future(run.wait())
        try:
            if run.finished is None:
                await self._set(managed, ActorState.RUNNING, pid=run.pid)
            tail = LogTail(run.log_path, from_end=managed.adopted)
            while not ended.done():
                await asyncio.wait({ended}, timeout=self.log_interval)
                await self._stream(spec, tail.read_new(flush=ended.done()))
            exit = ended.result()
        finally:
            ended.cancel()
        state = ActorState.EXITED if exit.ok else ActorState.FAILED
        reason = exit.reason
        if managed.stopping:
            reason += "; stopped because it is no longer desired"
        elif managed.shutdown:
            reason += "; stopped because its flamelet shut down"
        # the reason stays one line; the actor's last lines travel in `log_tail`
        tail_text = "\n".join(last_lines(run.log_path, TAIL_LINES)) if state == ActorState.FAILED else ""
        log.info("flamelet.actor_ended", state=state.value, exit_code=exit.code, reason=exit.reason)
        await self._set(managed, state, exit_code=exit.code, reason=reason, log_tail=tail_text, pid=run.pid)
        await self._done(managed)

    def _pull_progress(self, managed: Managed) -> PullProgress:
        """Reports `pulling` with bytes done/total, at most every PULL_REPORT_INTERVAL seconds."""
        last = 0.0
        image = managed.spec.artifact.image

        async def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PULL_REPORT_INTERVAL or (total and done >= total):
                last = now
                await self._set(managed, ActorState.PULLING, reason=f"pulling {image}", bytes_done=done, bytes_total=total)

        return progress

    async def _done(self, managed: Managed) -> None:
        if managed.stopping:
            await self._forget(managed)

    async def _stream(self, spec: ActorSpec, lines: list[str]) -> None:
        for start in range(0, len(lines), LOG_BATCH):
            await self._publish_log(spec, lines[start : start + LOG_BATCH])

    def _report(self, spec: ActorSpec, state: ActorState, **fields: Any) -> ActorReport:
        return ActorReport(actor=spec.actor, job=spec.job, node=self.node, role=spec.role, state=state, **fields)

    async def _set(self, managed: Managed, state: ActorState, **fields: object) -> None:
        managed.report = self._report(managed.spec, state, **fields)
        await self.publish(managed)

    async def publish(self, managed: Managed) -> None:
        """Publish the actor's *latest* report (a lock keeps a stale one from landing last);
        while reports are held, it stays the latest until `release()`."""
        if self._held:
            return
        async with managed.lock:
            await self._publish_report(managed.report)

    def hold(self) -> None:
        """Keep reports back (the node is (re)connecting) until `release()`."""
        self._held = True

    async def release(self) -> None:
        """Publish every actor's latest report (retained, idempotent) and publish as they come."""
        self._held = False
        for managed in list(self.actors.values()):
            await self.publish(managed)

    async def settle(self) -> None:
        """Until every actor that is no longer desired has ended."""
        watchers = [m.watcher for m in self.actors.values() if m.stopping and m.watcher is not None and not m.watcher.done()]
        if watchers:
            self.log.info("flamelet.stopping_undesired", actors=[m.spec.actor for m in self.actors.values() if m.stopping])
            await asyncio.wait(watchers)

    @property
    def running(self) -> int:
        """Actors that have not ended."""
        return sum(1 for m in self.actors.values() if not m.report.state.terminal)

    # --- shutdown ----------------------------------------------------------------------------
    async def shutdown(self, *, leave: bool = False) -> None:
        """Stop applying desired states; unless `leave`, stop every running actor (in parallel)."""
        self._closing = True
        if leave:
            for managed in self.actors.values():
                if managed.watcher is not None:
                    managed.watcher.cancel()  # stop watching; the actors keep running
            return
        running = [m for m in self.actors.values() if not m.report.state.terminal]
        for managed in running:
            managed.shutdown = True
        await asyncio.gather(*(self._stop(m) for m in running))
        await asyncio.gather(*(m.watcher for m in running if m.watcher is not None), return_exceptions=True)
