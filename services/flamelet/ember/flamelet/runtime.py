"""The runtime seam: how a flamelet starts, watches, stops and re-adopts actors.

`process` (`ember.flamelet.process`) runs each actor as a local subprocess; `docker`
(`ember.flamelet.containers`) runs it as a container of its job's image. `Runtimes` puts the
ones a node has behind one `Runtime` and sends each actor to the one its artifact needs. The
flamelet's supervisor only ever talks to these protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ember.errors import EmberError
from ember.events import ActorSpec


class StartFailed(EmberError):
    """The runtime could not start an actor (missing interpreter, bad artifact, ...)."""

    code = "actor_start_failed"


PullProgress = Callable[[int, int], Awaitable[None]]
"""Called as an image is pulled: bytes done, bytes in total (of the layers known so far)."""


@dataclass(frozen=True)
class ActorExit:
    """How an actor ended. `code` is None when it is unknown (killed while nobody watched)."""

    code: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0


@runtime_checkable
class ActorRun(Protocol):
    """One started (or adopted) actor."""

    spec: ActorSpec
    log_path: Path
    """The actor's combined stdout/stderr; the supervisor tails it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def finished(self) -> ActorExit | None:
        """How it ended, once known (already known for an adopted actor that ended meanwhile)."""
        ...

    async def wait(self) -> ActorExit:
        """Return once the actor has ended (at once for an adopted actor that already ended)."""
        ...

    async def stop(self, grace: float) -> None:
        """Ask the actor to stop (SIGTERM or equivalent); kill it after `grace` seconds."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """Starts actors and finds the ones a previous incarnation of the flamelet started."""

    name: str

    async def prepare(self, spec: ActorSpec, progress: PullProgress) -> None:
        """Fetch what `spec` needs before it can start (its image), reporting progress; raise
        StartFailed with a reason a user can act on. Returns at once when there is nothing to fetch."""
        ...

    async def start(self, spec: ActorSpec) -> ActorRun:
        """Start `spec`; raise StartFailed with a reason a user can act on."""
        ...

    async def adopt(self) -> Sequence[ActorRun]:
        """Actors started earlier on this node (still running or ended since)."""
        ...

    async def forget(self, actor: str) -> None:
        """Drop the bookkeeping (and container) of an ended actor that is no longer desired (its log stays)."""
        ...


def runtime_for(spec: ActorSpec) -> str:
    """The runtime an actor needs: `docker` for an image artifact (or a job that asks for docker:
    that runtime then says what is missing), else `process`."""
    return "docker" if spec.artifact.kind == "image" or spec.runtime == "docker" else "process"


class Runtimes:
    """The runtimes a node has, behind one `Runtime`: each actor goes to the one its artifact needs."""

    def __init__(self, *runtimes: Runtime) -> None:
        self.by_name = {runtime.name: runtime for runtime in runtimes}
        self.name = "+".join(self.by_name)
        self._of: dict[str, Runtime] = {}

    @property
    def names(self) -> list[str]:
        """What the node announces (`NodeInfo.runtimes`)."""
        return list(self.by_name)

    def pick(self, spec: ActorSpec) -> Runtime:
        wanted = runtime_for(spec)
        runtime = self.by_name.get(wanted)
        if runtime is None:
            why = " (no Docker engine answered when its flamelet started)" if wanted == "docker" else ""
            raise StartFailed(f"this node has no {wanted!r} runtime{why}; it runs {', '.join(self.by_name) or 'none'}")
        return runtime

    async def prepare(self, spec: ActorSpec, progress: PullProgress) -> None:
        await self.pick(spec).prepare(spec, progress)

    async def start(self, spec: ActorSpec) -> ActorRun:
        runtime = self.pick(spec)
        run = await runtime.start(spec)
        self._of[spec.actor] = runtime
        return run

    async def adopt(self) -> list[ActorRun]:
        found: list[ActorRun] = []
        for runtime in self.by_name.values():
            for run in await runtime.adopt():
                self._of[run.spec.actor] = runtime
                found.append(run)
        return found

    async def forget(self, actor: str) -> None:
        runtime = self._of.pop(actor, None)
        for each in [runtime] if runtime is not None else list(self.by_name.values()):
            await each.forget(actor)
