"""The builder's behaviour: every `submitted` job gets BuildStarted, then one build at a time.

Level-triggered from the projection (docs/control-plane.md): a job in `submitted` or `building`
that is not queued is queued, so a builder restarted mid-build simply builds again (the
artifact cache and the deterministic event ids make the redo harmless). Builds run in a worker
thread (`asyncio.to_thread`), never on the event loop. A job cancelled while it builds is not
moved on: its running pip is killed and no BuildSucceeded is appended.

Code arrives by digest (`code.bundle`, fetched from `bundles/{digest}` on a cache miss) or
from git (packed here and published the same way); the builder keeps each bundle retained on
the broker while a job that is not over uses it, and clears it a while after (`share`, `release`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from pydantic import ValidationError

from ember.bundle import Bundle, cached
from ember.bundle_bus import clear_bundle, fetch_bundle, publish_bundle
from ember.bus import Bus
from ember.envelope import utcnow
from ember.errors import EmberError
from ember.eventlog.base import EventLog, StoredEvent
from ember.events import Artifact, BuildFailed, BuildStarted, BuildSucceeded, Event, JobFailed, JobState, fact_id
from ember.follower import LogFollower, append_and_publish
from ember.jobspec import JobSpec
from ember.log import get_logger
from ember.metrics import BUILD_SECONDS
from ember.builder.artifacts import BuildError, BuildRun, build, bundle_file, code_folder
from ember.builder.images import ImageSettings, build_image
from ember.builder.settings import BuilderSettings
from ember.projection import TERMINAL_EVENT, Projection

log = get_logger("ember.builder")
PENDING = (JobState.SUBMITTED, JobState.BUILDING)


class Builder:
    """Turns jobs into artifacts (venvs, or images for the docker runtime); `worker()` is its one build loop."""

    def __init__(self, eventlog: EventLog, bus: Bus, settings: BuilderSettings) -> None:
        self.eventlog = eventlog
        self.bus = bus
        self.root = settings.artifacts_dir()
        self.pip_args = settings.pip_args()
        self.timeout = settings.builder_timeout
        self.fetch_timeout = settings.bundle_fetch_timeout
        self.bundle_keep = settings.builder_bundle_keep
        self.released: set[str] = set()
        """Bundle digests cleared from the broker (no job that is not over uses them)."""
        self.settings = settings
        self.follower = LogFollower(eventlog, bus, self.reconcile, name="builder", resync_every=settings.builder_resync)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.current: tuple[str, BuildRun] | None = None
        self.built = 0
        self.failed = 0

    @property
    def projection(self) -> Projection:
        return self.follower.projection

    async def append(self, event_id: str, job: str, event: Event) -> StoredEvent:
        envelope = event.envelope(job, source=self.bus.source, event_id=event_id)
        stored = await append_and_publish(self.eventlog, self.bus, envelope)
        if not stored.duplicate:
            log.info("event.appended", job=job, type=type(event).__name__, id=event_id, seq=stored.seq)
        return stored

    async def reconcile(self, projection: Projection, _new: list[StoredEvent]) -> None:
        for job in list(projection.jobs.values()):
            if job.state == JobState.SUBMITTED:
                kind = "an image" if job.spec.get("runtime") == "docker" else "a venv artifact"
                await self.append(fact_id(job.id, "build-started"), job.id, BuildStarted(reason=f"building {kind}"))
            if job.state in PENDING and job.id not in self.queued:
                self.queued.add(job.id)
                self.queue.put_nowait(job.id)
        await self.release(projection)
        if self.current is not None:
            job_id, run = self.current
            view = projection.jobs.get(job_id)
            if view is not None and view.state.terminal and not run.cancelled:
                log.info("build.cancelling", job=job_id, state=view.state.value)
                run.cancel()

    async def release(self, projection: Projection) -> None:
        """Clear the retained bundle of jobs that are over, once none that is not over uses it and
        the last of them ended `builder_bundle_keep` seconds ago (reconcile runs at every resync)."""
        live: set[str] = set()
        ended: dict[str, datetime] = {}
        for job in projection.jobs.values():
            digests = {(job.spec.get("code") or {}).get("bundle") or "", job.artifact.bundle if job.artifact else ""} - {""}
            if not job.state.terminal:
                live.update(digests)
                continue
            end = job.transitions[-1].time if job.transitions else job.submitted
            for digest in digests:
                ended[digest] = max(end, ended.get(digest, end))
        self.released -= live
        cutoff = utcnow() - timedelta(seconds=self.bundle_keep)
        for digest in sorted(d for d, end in ended.items() if d not in live and d not in self.released and end <= cutoff):
            try:
                await clear_bundle(self.bus, digest)
            except EmberError as exc:
                log.warning("bundle.not_cleared", digest=digest, reason=exc.message)
                continue
            self.released.add(digest)
            log.info("bundle.cleared", digest=digest)

    async def fetch(self, spec: JobSpec) -> bytes | None:
        """The bytes of the job's bundle when the cache does not hold it yet (else None)."""
        digest = spec.code.bundle
        if not digest or cached(digest, self.root / "bundles") is not None:
            return None
        try:
            return await fetch_bundle(self.bus.url, self.bus.root, digest, wait=self.fetch_timeout)
        except EmberError as exc:
            raise BuildError(exc.message) from None

    async def share(self, digest: str) -> None:
        """Publish bundle `digest` (retained) from the cache, so nodes can fetch it while its job lives."""
        path = bundle_file(self.root, digest)
        if digest and path.is_file():
            self.released.discard(digest)
            await publish_bundle(self.bus, Bundle(digest, path.read_bytes(), 0))

    def image_settings(self) -> ImageSettings:
        settings = self.settings
        return ImageSettings(
            registry=settings.resolved_registry(),
            wheelhouse=settings.wheelhouse_dir(),
            base_image=settings.base_image,
            base_recipe=settings.builder_base_recipe,
            pip_args=tuple(self.pip_args),
            timeout=self.timeout,
        )

    async def worker(self) -> None:
        """Build queued jobs one at a time, forever."""
        while True:
            job_id = await self.queue.get()
            try:
                await self.build_one(job_id)
            finally:
                self.queued.discard(job_id)
                self.queue.task_done()

    async def build_one(self, job_id: str) -> None:
        view = self.projection.jobs.get(job_id)
        if view is None or view.state not in PENDING:
            return
        bound = log.bind(job=job_id)
        started = time.monotonic()
        run = BuildRun()
        self.current = (job_id, run)
        artifact: Artifact | None = None
        failure: BuildError | None = None
        try:
            spec = JobSpec.model_validate(view.spec)
            bound.info("build.started", code=spec.code.bundle or spec.code.git or spec.code.path or "(none)", runtime=spec.runtime)
            data = await self.fetch(spec)
            if spec.runtime == "docker":
                folder, _, _ = await asyncio.to_thread(code_folder, spec, self.root, data, run)
                artifact = await asyncio.to_thread(build_image, spec, str(folder or ""), self.image_settings(), run)
            else:
                built, _ = await asyncio.to_thread(build, spec, self.root, run, data=data, pip_args=self.pip_args, timeout=self.timeout)
                if data is None:  # fetched just now: still retained; else (cached, or packed from git) publish it
                    await self.share(built.bundle)
                artifact = built
        except BuildError as exc:
            failure = exc
        except ValidationError as exc:
            failure = BuildError(f"the stored job spec does not validate: {exc.errors()[0]['msg']}")
        except Exception as exc:  # a bug or an OS error: the job fails, the builder goes on
            bound.exception("build.crashed")
            failure = BuildError(f"internal builder error: {type(exc).__name__}: {exc}")
        finally:
            self.current = None
        duration = time.monotonic() - started
        BUILD_SECONDS.labels(outcome="failed" if failure else "succeeded").observe(duration)
        await self.follower.catch_up()
        view = self.projection.jobs.get(job_id)
        if view is not None and view.state.terminal:
            bound.info("build.discarded", state=view.state.value, duration_s=round(duration, 3))
            return
        if artifact is not None:
            self.built += 1
            bound.info("build.succeeded", key=artifact.key, cached=artifact.cached, duration_s=round(duration, 3))
            await self.append(fact_id(job_id, "build-done"), job_id, BuildSucceeded(artifact=artifact, duration_s=round(duration, 3)))
            return
        assert failure is not None
        self.failed += 1
        bound.warning("build.failed", reason=failure.reason, duration_s=round(duration, 3))
        await self.append(fact_id(job_id, "build-done"), job_id, BuildFailed(reason=failure.reason, log_tail=failure.log_tail))
        await self.append(fact_id(job_id, TERMINAL_EVENT), job_id, JobFailed(reason=f"build failed: {failure.reason}"))
