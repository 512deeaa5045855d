"""One federated training job, aggregator side: learners, rounds, progress, MLflow, result.

`Orchestrator(bus, spec, ...)` registers its grid on `bus` (before the bus starts); `run()`:

1. waits (up to `training.round_timeout`) for `learners.min` ready learners (all of them
   if they come within a short grace), else fails `only N learners ready ..., minimum M`;
2. runs the ModelManager's strategy or the user's ServerApp on `MqttGrid` in a worker thread;
3. after each round (once the next round's messages are on their way, or at the end)
   publishes `RoundCompleted` on `jobs/{job}/progress` and logs the round to MLflow
   (batched: at most one write every `MLFLOW_INTERVAL_S`); fails `only N learners left,
   minimum M` when too few learners remain;
   ModelManager jobs also checkpoint every round (`ember.fl.checkpoint`, in the background,
   the newest `training.checkpoints` kept) and publish `CheckpointSaved` once one is stored;
   an aggregator that finds a checkpoint of its job resumes after it, in the job's MLflow run;
4. logs and registers the final model, publishes `JobResult` (metrics, MLflow run id, model
   version) on `jobs/{job}/progress`, and sends `done` to every learner.

While it runs, `follow()` keeps the grid's learners those of the job's current placement (a
re-placed learner joins, a fenced one is dropped); `fence()` ends a fenced aggregator's run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember import topics
from ember.bus import Bus
from ember.errors import EmberError
from ember.events import CheckpointSaved, JobResult, RoundCompleted, fact_id
from ember.fl import flwr_compat as compat
from ember.fl.checkpoint import Checkpoint, CheckpointStore, CheckpointWriter, LocalStore, MlflowStore, latest
from ember.fl.clientapp import base_config, new_manager
from ember.fl.fence import Roster
from ember.fl.grid import MqttGrid, TooFewLearners
from ember.fl.rounds import RoundStats
from ember.fl.serverapp import run_model_manager, run_server_app
from ember.fl.tracking import Tracker
from ember.jobspec import JobSpec
from ember.log import get_logger


MLFLOW_INTERVAL_S = 2.0
"""Round metrics reach MLflow at most this often, batched (an MLflow write costs a fast round's
worth of CPU): a round that ends this long after the last write (or the start) is written at
once, faster ones wait for the next write, and `_drain` writes the rest before the result."""


REPLAYED_ROUNDS = 100
"""A resumed aggregator publishes again this many of the checkpoint's latest rounds: far more than
the previous aggregator can have left unpublished (its reports trail the rounds by one)."""


def run_id_for(job: str) -> int:
    """Flower run id of a job (stable, 53 bits)."""
    return int.from_bytes(hashlib.sha256(job.encode()).digest()[:6], "big") + 1


@dataclass
class TrainingResult:
    ok: bool
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    model_version: str = ""
    rounds: list[RoundStats] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        """The `JobResult` envelope's data (and the `EMBER_RESULT` line)."""
        return JobResult(metrics=self.metrics, mlflow_run_id=self.mlflow_run_id, model_version=self.model_version).model_dump(mode="json")


class Orchestrator:
    """Drives one job's training over `bus`; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        spec: JobSpec,
        *,
        job: str,
        actor: str,
        learners: list[str],
        code_dir: str | Path | None = None,
        tracking_uri: str | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.bus, self.spec, self.job, self.actor = bus, spec, job, actor
        self.code_dir = code_dir
        self.tracking_uri = tracking_uri
        self.checkpoint_dir = checkpoint_dir
        self.resumed_from: Checkpoint | None = None
        self._checkpoints: CheckpointWriter | None = None
        self.log = get_logger("ember.fl.orchestrator", job=job, actor=actor)
        self.grid = MqttGrid(bus, job=job, learners=learners, minimum=spec.learners.minimum, run_id=run_id_for(job),
                             join_timeout=spec.training.round_timeout)
        self.result = TrainingResult(ok=False)
        self.fenced: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracker: Tracker | None = None
        self._reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-mlflow")
        self._reports: list[Future[Any]] = []
        self._unlogged: list[RoundStats] = []
        self._finished: list[RoundStats] = []
        self._logged_at = time.monotonic()

    async def run(self) -> TrainingResult:
        """Train; never raises for a job failure (see `result.ok` / `result.reason`)."""
        self._loop = asyncio.get_running_loop()
        self.grid.bind(self._loop)
        compat.set_task_identity(run_id=self.grid.run.run_id, node_id=compat.AGGREGATOR_NODE_ID)
        try:
            if self.tracking_uri:
                self._tracker = Tracker(self.tracking_uri, self.spec, self.job)
                self.result.mlflow_run_id = await asyncio.to_thread(self._tracker.start)
            await asyncio.to_thread(self._open_checkpoints)
            await self._replay_rounds()
            if not self._trained():  # else the previous aggregator died between its last round and its result
                live = await self.grid.wait_ready(self.spec.training.round_timeout)
                self.log.info("aggregator.start", learners=live, rounds=self.spec.training.rounds, strategy=self.spec.training.strategy)
            await asyncio.to_thread(self._train)
            self.result.ok = True
            await self._publish_result()
        except EmberError as exc:
            self.result.reason = exc.message
        except Exception as exc:
            self.log.exception("aggregator.crashed")
            self.result.reason = f"aggregator failed: {type(exc).__name__}: {exc}"[:1000]
        finally:
            if self._checkpoints is not None:
                await asyncio.to_thread(self._checkpoints.close, 60)
            await asyncio.to_thread(self._drain, quiet=True)
            self._reporter.shutdown(wait=False)
            if self._tracker is not None:
                await asyncio.to_thread(self._tracker.finish, self.result.ok)
            await self._say_done()
        return self.result

    def stop(self, reason: str) -> None:
        """Stop training (on the loop, e.g. on SIGTERM): the strategy's next grid call fails."""
        self.grid.close(reason)

    def fence(self, reason: str) -> None:
        """This aggregator's generation is over (on the loop): stop training, and leave the learners
        alone (no `done`): they may already serve the aggregator that replaced this one."""
        self.fenced = reason
        self.grid.close(reason)

    def follow(self, roster: Roster) -> None:
        """The job's placement changed (on the loop): train with its current learners."""
        if roster.learners and list(roster.learners) != self.grid.learners:
            self.grid.update_roster(roster.learners, reason=f"not among the learners of generation {roster.generation}")

    # --- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_store(self) -> CheckpointStore | None:
        """The job's MLflow run when tracked, else `checkpoint_dir`; None: no checkpoints."""
        if self.spec.training.checkpoints == 0 or self.spec.code.serverapp:
            return None
        if self._tracker is not None and self._tracker.run_id:
            return MlflowStore(self._tracker.uri, self._tracker.run_id)
        if self.checkpoint_dir is not None:
            return LocalStore(self.checkpoint_dir)
        return None

    def _open_checkpoints(self) -> None:
        """Find the checkpoint to resume from and start the writer (blocking: MLflow, disk)."""
        store = self._checkpoint_store()
        if store is None:
            return
        found = latest(store)
        if found is not None:
            self.resumed_from = found[0]
            self.log.info("aggregator.resume", round=found[0].round, digest=found[1])
            self.result.rounds = []
            if found[0].history:
                self.result.metrics = dict(found[0].history[-1].get("metrics", {}))
            if self._tracker is not None:
                self._tracker.log_history(found[0].history)
        self._checkpoints = CheckpointWriter(
            store, keep=self.spec.training.checkpoints, interval=self.spec.training.checkpoint_interval, on_saved=self._checkpoint_saved
        )

    def _trained(self) -> bool:
        """The checkpoint to resume from holds the last round: only the result is left to give."""
        return self.resumed_from is not None and self.resumed_from.round >= self.spec.training.rounds

    async def _replay_rounds(self) -> None:
        """Resuming: publish again the checkpoint's latest rounds. A round is published once the
        next one starts, so the rounds just before the checkpoint may never have left the previous
        aggregator; the manager ignores the ones it holds (deterministic ids)."""
        if self.resumed_from is None:
            return
        topic = topics.JOB_PROGRESS.format(self.bus.root, job=self.job)
        for entry in self.resumed_from.history[-REPLAYED_ROUNDS:]:
            event = RoundCompleted.model_validate(entry)
            await self.bus.publish(topic, event.envelope(self.job, source=self.actor, event_id=fact_id(self.job, "round", event.round)))

    def _checkpoint_saved(self, number: int, digest: str) -> None:
        """In the writer's thread: publish `CheckpointSaved` (best effort; the store holds it)."""
        envelope = CheckpointSaved(round=number, digest=digest).envelope(
            self.job, source=self.actor, event_id=fact_id(self.job, "checkpoint", number, digest[:16])
        )
        assert self._loop is not None
        topic = topics.JOB_PROGRESS.format(self.bus.root, job=self.job)
        self._reports.append(asyncio.run_coroutine_threadsafe(self.bus.publish(topic, envelope), self._loop))

    # --- in the worker thread -----------------------------------------------------------------
    def _train(self) -> None:
        if self.spec.code.serverapp:
            self.grid.on_round_start = self._close_rounds_before
            run_server_app(self.grid, self.spec, self.code_dir)
            self._close_rounds_before(None)
            self._drain()
            return
        manager = new_manager(self.spec, self.code_dir)
        manager.build(base_config(self.spec, node=self.actor))
        self.grid.on_round_start = lambda _number: self._report_finished()
        try:
            writer = self._checkpoints
            if self._trained() and self.resumed_from is not None:
                manager.set_parameters(self.resumed_from.parameters)
            else:
                run_model_manager(
                    self.grid, manager, self.spec, self._round_done, resume=self.resumed_from, on_checkpoint=writer.submit if writer else None
                )
        except BaseException:
            self._report_finished(check=False)  # the rounds that did finish still count
            raise
        self._report_finished()
        self._drain()
        if self._tracker is not None:
            self.result.model_version = self._tracker.log_model(manager, self.code_dir)

    def _close_rounds_before(self, number: int | None) -> None:
        """Flower apps: a round ends when the next one starts (or the app returns)."""
        for open_round in self.grid.book.open_rounds():
            if number is None or open_round < number:
                stats = self.grid.book.finish(open_round)
                if stats is not None:
                    self._report(stats)

    def _round_done(self, number: int, metrics: dict[str, float]) -> dict[str, Any] | None:
        """ModelManager jobs: the round is over; it is reported once the next round's messages are
        on their way (or at the end), so reporting overlaps the learners' work."""
        stats = self.grid.book.finish(number, metrics)
        if stats is None:
            return None
        self._finished.append(stats)
        return stats.event_data()

    def _report_finished(self, *, check: bool = True) -> None:
        finished, self._finished = self._finished, []
        for stats in finished:
            self._report(stats, check=check)

    def _report(self, stats: RoundStats, *, check: bool = True) -> None:
        """Record, log and publish a round; with `check`, fail when too few learners are left."""
        self.result.rounds.append(stats)
        self.result.metrics = dict(stats.metrics)
        self.log.info("aggregator.round", **stats.event_data())
        # Reporting stays off the round's critical path: MLflow writes run in their own thread
        # (in order), the publish on the loop; `_drain` waits for both before the result.
        self._unlogged.append(stats)
        if time.monotonic() - self._logged_at >= MLFLOW_INTERVAL_S:
            self._log_rounds()
        envelope = RoundCompleted(**stats.event_data()).envelope(
            self.job, source=self.actor, event_id=fact_id(self.job, "round", stats.round)
        )
        assert self._loop is not None
        topic = topics.JOB_PROGRESS.format(self.bus.root, job=self.job)
        self._reports.append(asyncio.run_coroutine_threadsafe(self.bus.publish(topic, envelope), self._loop))
        reason = self.grid.below_minimum() if check else None
        if reason:
            raise TooFewLearners(reason)

    def _log_rounds(self) -> None:
        """Hand the rounds not yet in MLflow to the MLflow thread, as one batch."""
        rounds, self._unlogged = self._unlogged, []
        if self._tracker is not None and rounds:
            self._logged_at = time.monotonic()
            self._reports.append(self._reporter.submit(self._tracker.log_rounds, rounds))

    def _drain(self, quiet: bool = False) -> None:
        """Wait for every round report (MLflow, publish); raise the first error unless quiet."""
        self._log_rounds()
        reports, self._reports = self._reports, []
        for future in reports:
            try:
                future.result(timeout=60)
            except Exception as exc:
                if not quiet:
                    raise
                self.log.warning("aggregator.report_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    # --- on the loop ----------------------------------------------------------------------------
    async def _publish_result(self) -> None:
        envelope = self.bus.envelope(JobResult.__name__, self.result.data(), subject=self.job, id=fact_id(self.job, "result"))
        await self.bus.publish(topics.JOB_PROGRESS.format(self.bus.root, job=self.job), envelope)

    async def _say_done(self) -> None:
        if self.fenced:
            return
        try:
            await self.grid.signal_all("done", ok=self.result.ok)
        except EmberError as exc:
            self.log.warning("aggregator.done_not_sent", error=exc.message)
