"""Job and node views as a pure projection of the event log.

Every control-plane service (and `ember job show`) folds the same events through `Projection`,
so they agree on a job's state. Applying an event twice is a no-op (events carry `seq`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ember.eventlog.base import StoredEvent
from ember.events import (
    ActorsPlaced,
    ActorState,
    ActorStateChanged,
    Artifact,
    BuildFailed,
    BuildStarted,
    BuildSucceeded,
    CheckpointSaved,
    JobCancelled,
    JobFailed,
    JobRecovering,
    JobRunning,
    JobState,
    JobSubmitted,
    JobSucceeded,
    ModelServeRequested,
    ModelServeStopped,
    ResultReported,
    NodeJoined,
    NodeLost,
    Role,
    RoundCompleted,
    parse_event,
)
from ember.serving import ServingView
from ember.serving import apply as apply_serving

TERMINAL_EVENT = "terminal"
"""`fact_id(job, TERMINAL_EVENT)` is the id of a job's one terminal event, whoever appends it."""


@dataclass
class Transition:
    state: JobState
    time: datetime
    reason: str
    seq: int


@dataclass
class ActorView:
    actor: str
    role: Role
    node: str
    index: int
    generation: int
    state: ActorState = ActorState.PENDING
    exit_code: int | None = None
    reason: str = ""
    log_tail: str = ""


@dataclass
class JobView:
    id: str
    name: str
    spec: dict[str, Any]
    spec_dir: str
    submitted: datetime
    state: JobState = JobState.SUBMITTED
    reason: str = ""
    transitions: list[Transition] = field(default_factory=list)
    artifact: Artifact | None = None
    generation: int = 0
    actors: dict[str, ActorView] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    round_numbers: set[int] = field(default_factory=set)
    result: dict[str, Any] = field(default_factory=dict)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """Every `JobRecovering` so far: generation, attempt, reason."""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    """The latest `CheckpointSaved`: round, digest."""

    def current_actors(self) -> list[ActorView]:
        """Actors of the latest placement generation (re-placed ones replace lost ones)."""
        return [a for a in self.actors.values() if a.generation == self.generation]

    def learners(self) -> list[ActorView]:
        return [a for a in self.current_actors() if a.role == Role.LEARNER]

    def aggregator(self) -> ActorView | None:
        return next((a for a in self.current_actors() if a.role == Role.AGGREGATOR), None)

    def summary(self, last_rounds: int | None = None) -> dict[str, Any]:
        """The job as `jobs.get` returns it; `last_rounds` keeps only the latest N rounds
        (`rounds_completed` always counts them all)."""
        rounds = self.rounds if last_rounds is None else self.rounds[-last_rounds:] if last_rounds > 0 else []
        return {
            "job": self.id,
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "submitted": self.submitted.isoformat(),
            "transitions": [
                {"state": t.state.value, "time": t.time.isoformat(), "reason": t.reason, "seq": t.seq} for t in self.transitions
            ],
            "actors": [
                {
                    "actor": a.actor,
                    "role": a.role.value,
                    "node": a.node,
                    "state": a.state.value,
                    "exit_code": a.exit_code,
                    "reason": a.reason,
                    "generation": a.generation,
                    "log_tail": a.log_tail,
                }
                for a in self.actors.values()
            ],
            "rounds": rounds,
            "rounds_completed": len(self.rounds),
            "rounds_planned": (self.spec.get("training") or {}).get("rounds", 3),
            "result": self.result,
            "recoveries": self.recoveries,
            "checkpoint": self.checkpoint or None,
            "artifact": self.artifact.model_dump() if self.artifact else None,
        }


def fence(job: JobView, placed: ActorsPlaced) -> None:
    """The actors a re-placement left out are fenced: their generation is over, so one that had not
    ended is `lost` for good (later reports of it change nothing, see `ActorStateChanged` below)."""
    kept = {p.actor for p in placed.actors}
    for actor in job.actors.values():
        if actor.actor not in kept and actor.generation < placed.generation and not actor.state.terminal:
            actor.state = ActorState.LOST
            actor.reason = f"fenced: re-placed in generation {placed.generation} ({placed.reason or 'its node was lost'})"


@dataclass
class NodeView:
    node: str
    online: bool
    info: dict[str, Any]
    since: datetime


class Projection:
    """Folds events into job and node views. `apply` returns True when a job's state changed."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.nodes: dict[str, NodeView] = {}
        self.servings: dict[str, ServingView] = {}
        """model -> where it is served (`ember.serving`)."""
        self.last_seq = 0

    def apply_all(self, events: list[StoredEvent]) -> None:
        for event in events:
            self.apply(event)

    def apply(self, stored: StoredEvent) -> bool:
        if stored.seq <= self.last_seq:
            return False
        self.last_seq = stored.seq
        try:
            event = parse_event(stored.envelope)
        except (KeyError, ValueError):
            return False  # an event type this version does not know: kept in the log, ignored here
        env = stored.envelope
        if isinstance(event, NodeJoined):
            self.nodes[event.node] = NodeView(event.node, True, event.info, env.time)
            return False
        if isinstance(event, NodeLost):
            view = self.nodes.setdefault(event.node, NodeView(event.node, False, {}, env.time))
            view.online, view.since = False, env.time
            return False
        if isinstance(event, ModelServeRequested | ModelServeStopped):
            apply_serving(self.servings, event)
            return False
        if isinstance(event, JobSubmitted):
            if env.subject not in self.jobs:
                job = JobView(env.subject, event.name, event.spec, event.spec_dir, env.time)
                job.transitions.append(Transition(JobState.SUBMITTED, env.time, "submitted", stored.seq))
                self.jobs[env.subject] = job
                return True
            return False
        known = self.jobs.get(env.subject)
        if known is None:
            return False
        return self._apply_job(known, event, stored)

    def _move(self, job: JobView, state: JobState, reason: str, stored: StoredEvent, allowed: tuple[JobState, ...]) -> bool:
        if job.state not in allowed:
            return False
        job.state, job.reason = state, reason
        job.transitions.append(Transition(state, stored.envelope.time, reason, stored.seq))
        return True

    def _apply_job(self, job: JobView, event: Any, stored: StoredEvent) -> bool:
        S = JobState
        if isinstance(event, BuildStarted):
            return self._move(job, S.BUILDING, event.reason or "building artifact", stored, (S.SUBMITTED,))
        if isinstance(event, BuildSucceeded):
            job.artifact = event.artifact
            reason = "artifact cached" if event.artifact.cached else f"built in {event.duration_s:.1f}s"
            return self._move(job, S.PLACING, reason, stored, (S.SUBMITTED, S.BUILDING))
        if isinstance(event, BuildFailed):
            return self._move(job, S.FAILED, f"build failed: {event.reason}", stored, (S.SUBMITTED, S.BUILDING))
        if isinstance(event, ActorsPlaced):
            if job.state.terminal or event.generation <= job.generation:
                return False
            job.generation = event.generation
            for p in event.actors:
                kept = job.actors.get(p.actor)
                view = ActorView(p.actor, p.role, p.node, p.index, event.generation)
                if kept is not None and kept.node == p.node:  # a survivor of a re-placement keeps its state
                    view.state, view.exit_code, view.reason, view.log_tail = kept.state, kept.exit_code, kept.reason, kept.log_tail
                job.actors[p.actor] = view
            fence(job, event)
            reason = event.reason or f"{len(event.actors)} actors placed"
            # A recovering job stays `recovering` until its new aggregator runs (JobRunning).
            return self._move(job, S.DEPLOYING, reason, stored, (S.PLACING, S.RUNNING, S.DEPLOYING))
        if isinstance(event, ActorStateChanged):
            actor = job.actors.get(event.actor)
            if actor is not None and not actor.state.terminal:
                actor.state, actor.exit_code = event.state, event.exit_code
                actor.reason, actor.log_tail = event.reason, event.log_tail
            return False
        if isinstance(event, JobRunning):
            return self._move(job, S.RUNNING, event.reason, stored, (S.DEPLOYING, S.RECOVERING))
        if isinstance(event, JobRecovering):
            if job.state.terminal or any(r["generation"] == event.generation for r in job.recoveries):
                return False
            job.recoveries.append(event.model_dump(mode="json"))
            reason = f"attempt {event.attempt}: {event.reason}"
            return self._move(job, S.RECOVERING, reason, stored, (S.DEPLOYING, S.RUNNING, S.RECOVERING))
        if isinstance(event, CheckpointSaved):
            if event.round >= job.checkpoint.get("round", 0):
                job.checkpoint = event.model_dump(mode="json")
            return False
        if isinstance(event, RoundCompleted):
            if event.round not in job.round_numbers:
                job.round_numbers.add(event.round)
                job.rounds.append(event.model_dump(mode="json"))
            return False
        if isinstance(event, ResultReported):  # before or after JobSucceeded: whichever came first
            job.result.update({k: v for k, v in event.model_dump(mode="json").items() if v})
            return False
        nonterminal = (S.SUBMITTED, S.BUILDING, S.PLACING, S.DEPLOYING, S.RUNNING, S.RECOVERING)
        if isinstance(event, JobSucceeded):
            reported = {k: v for k, v in job.result.items() if v}
            job.result = event.model_dump(mode="json") | reported
            return self._move(job, S.SUCCEEDED, event.reason or "succeeded", stored, nonterminal)
        if isinstance(event, JobFailed):
            return self._move(job, S.FAILED, event.reason, stored, nonterminal)
        if isinstance(event, JobCancelled):
            return self._move(job, S.CANCELLED, event.reason, stored, nonterminal)
        return False
