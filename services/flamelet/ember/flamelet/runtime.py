"""The runtime seam: how a flamelet starts, watches, stops and re-adopts actors.

`process` (`ember.flamelet.process`) runs each actor as a local subprocess; a `docker` runtime
(a later issue) implements the same two protocols with containers. The flamelet's supervisor
only ever talks to these protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ember.errors import EmberError
from ember.events import ActorSpec


class StartFailed(EmberError):
    """The runtime could not start an actor (missing interpreter, bad artifact, ...)."""

    code = "actor_start_failed"


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

    async def start(self, spec: ActorSpec) -> ActorRun:
        """Start `spec`; raise StartFailed with a reason a user can act on."""
        ...

    async def adopt(self) -> list[ActorRun]:
        """Actors started earlier on this node (still running or ended since)."""
        ...

    def forget(self, actor: str) -> None:
        """Drop the bookkeeping of an ended actor that is no longer desired (its log stays)."""
        ...
