"""Where a job's actors go: pure functions over the live node table and the projection.

Rules (deterministic for the same inputs):
- only online nodes that announce the role's capability and the job's runtime are used;
- each actor reserves the job's `resources` (cpus, memory_mb) on its node; a node's capacity is
  what it announced (times the overcommit factor) minus the live actors of other jobs on it;
- learners first, spread one per node before any node takes a second (fewest of this job's
  actors first, then by name);
- when the job names data tags and some eligible nodes hold rows for them, learners go only to
  those nodes (doubling up there rather than landing on a node without the data); when no
  node holds them, learners are placed anyway and fail with `no data for tags` (the failure
  then names the problem, instead of the job waiting for data that may never come);
- the aggregator goes to an aggregator-capable node, preferring one without this job's learners.
Not enough room raises `NoCapacity`, whose message says what was needed and what was there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ember.events import ActorState, Placement, Role
from ember.jobspec import DataSpec, LearnerSpec, ProbeSpec, ResourceSpec
from ember.notifier.nodes import NodeRow
from ember.projection import ActorView, JobView, Projection


class NoCapacity(Exception):
    """Not enough online nodes with room for the job's actors."""


@dataclass(frozen=True)
class JobNeeds:
    """The parts of a job spec placement and desired state look at."""

    learners: int
    tags: tuple[str, ...]
    cpus: float
    memory_mb: int
    runtime: str
    probe: ProbeSpec | None

    @classmethod
    def of(cls, job: JobView) -> JobNeeds:
        """From the spec in the log (already validated by the manager); ValueError if unusable."""
        spec = job.spec
        try:
            learners = LearnerSpec.model_validate(spec.get("learners") or {})
            data = DataSpec.model_validate(spec.get("data") or {})
            resources = ResourceSpec.model_validate(spec.get("resources") or {})
            probe = ProbeSpec.model_validate(spec["probe"]) if spec.get("probe") is not None else None
        except (ValidationError, AttributeError, TypeError) as exc:
            raise ValueError(f"unusable job spec: {exc}") from None
        runtime = str(spec.get("runtime") or "process")
        return cls(learners.count, tuple(data.tags), resources.cpus, resources.memory_mb, runtime, probe)


@dataclass
class Room:
    """Free cpus and memory of one node for one job's placement."""

    row: NodeRow
    cpus: float
    memory_mb: float
    actors: int = 0  # of this job, already on the node
    roles: frozenset[Role] = field(default_factory=frozenset)

    def fits(self, needs: JobNeeds) -> bool:
        return self.cpus + 1e-9 >= needs.cpus and self.memory_mb >= needs.memory_mb

    def take(self, needs: JobNeeds) -> None:
        self.cpus -= needs.cpus
        self.memory_mb -= needs.memory_mb
        self.actors += 1


def usage(projection: Projection, *, exclude: str | None = None) -> dict[str, tuple[float, float]]:
    """cpus and memory reserved per node by the live actors of non-terminal jobs."""
    used: dict[str, tuple[float, float]] = {}
    for job in projection.jobs.values():
        if job.id == exclude or job.state.terminal or job.generation == 0:
            continue
        try:
            needs = JobNeeds.of(job)
        except ValueError:
            continue
        for actor in job.current_actors():
            if actor.state in (ActorState.EXITED, ActorState.FAILED, ActorState.LOST):
                continue
            cpus, mem = used.get(actor.node, (0.0, 0.0))
            used[actor.node] = (cpus + needs.cpus, mem + needs.memory_mb)
    return used


def rooms(online: Iterable[NodeRow], used: dict[str, tuple[float, float]], needs: JobNeeds, overcommit: float) -> list[Room]:
    out = []
    for row in online:
        assert row.info is not None
        if needs.runtime not in row.info.runtimes:
            continue
        cpus, mem = used.get(row.node, (0.0, 0.0))
        out.append(Room(row, row.info.cpus * overcommit - cpus, row.info.memory_mb * overcommit - mem, roles=frozenset(row.info.capabilities)))
    return out


def _pick(candidates: list[Room], needs: JobNeeds) -> Room | None:
    fitting = [room for room in candidates if room.fits(needs)]
    return min(fitting, key=lambda room: (room.actors, room.row.node)) if fitting else None


def _learner_candidates(available: list[Room], needs: JobNeeds) -> list[Room]:
    learners = [room for room in available if Role.LEARNER in room.roles]
    if needs.tags:
        with_data = [room for room in learners if any(room.row.info.data.get(tag, 0) > 0 for tag in needs.tags)]
        if with_data:
            return with_data
    return learners


def describe(available: list[Room], needs: JobNeeds, wanted: str) -> str:
    nodes = ", ".join(f"{r.row.node} ({'/'.join(sorted(r.roles))}, {max(r.cpus, 0):g} cpus free)" for r in available) or "none"
    return f"need {wanted} ({needs.cpus:g} cpus, {needs.memory_mb} MB each, {needs.runtime} runtime); online nodes: {nodes}"


def assign(wanted: list[tuple[Role, int, str]], available: list[Room], needs: JobNeeds) -> list[Placement]:
    """Place `(role, index, actor id)` requests on `available` (mutated), learners first."""
    placements = []
    learners = _learner_candidates(available, needs)
    aggregators = [room for room in available if Role.AGGREGATOR in room.roles]
    for role, index, actor in sorted(wanted, key=lambda w: (w[0] != Role.LEARNER, w[1])):
        room = _pick(learners if role == Role.LEARNER else aggregators, needs)
        if room is None:
            learners_wanted = sum(1 for w in wanted if w[0] == Role.LEARNER)
            text = " + ".join(
                part for part in (
                    "1 aggregator" if any(w[0] == Role.AGGREGATOR for w in wanted) else "",
                    f"{learners_wanted} learner{'s' if learners_wanted != 1 else ''}" if learners_wanted else "",
                ) if part
            )
            raise NoCapacity(describe(available, needs, text))
        room.take(needs)
        placements.append(Placement(actor=actor, role=role, node=room.row.node, index=index))
    return placements


def actor_id(job: str, role: Role, index: int, generation: int) -> str:
    """`{job}-aggregator`, `{job}-learner-{i}`, and `-g{generation}` for re-placements."""
    base = f"{job}-aggregator" if role == Role.AGGREGATOR else f"{job}-learner-{index}"
    return base if generation <= 1 else f"{base}-g{generation}"


def place_job(job: JobView, projection: Projection, online: list[NodeRow], *, overcommit: float = 1.0) -> list[Placement]:
    """Generation 1: one aggregator and `learners.count` learners."""
    needs = JobNeeds.of(job)
    available = rooms(online, usage(projection, exclude=job.id), needs, overcommit)
    wanted = [(Role.AGGREGATOR, 0, actor_id(job.id, Role.AGGREGATOR, 0, 1))]
    wanted += [(Role.LEARNER, i, actor_id(job.id, Role.LEARNER, i, 1)) for i in range(needs.learners)]
    return assign(wanted, available, needs)


def lost_actors(job: JobView, offline: set[str]) -> list[ActorView]:
    """Current actors on offline nodes that had not finished (an actor that exited ok is done)."""
    return [a for a in job.current_actors() if a.node in offline and a.state not in (ActorState.EXITED, ActorState.FAILED)]


def replace_lost(job: JobView, projection: Projection, online: list[NodeRow], lost: list[ActorView], *, overcommit: float = 1.0) -> list[Placement]:
    """Generation + 1: the surviving actors keep their ids and nodes; the lost ones get new ids."""
    needs = JobNeeds.of(job)
    generation = job.generation + 1
    available = rooms(online, usage(projection, exclude=job.id), needs, overcommit)
    lost_ids = {a.actor for a in lost}
    kept = [a for a in job.current_actors() if a.actor not in lost_ids]
    by_node = {room.row.node: room for room in available}
    for actor in kept:
        if actor.node in by_node and actor.state not in (ActorState.EXITED, ActorState.FAILED):
            by_node[actor.node].take(needs)
    wanted = [(a.role, a.index, actor_id(job.id, a.role, a.index, generation)) for a in lost]
    placed = assign(wanted, available, needs)
    survivors = [Placement(actor=a.actor, role=a.role, node=a.node, index=a.index) for a in kept]
    return sorted(survivors + placed, key=lambda p: (p.role != Role.AGGREGATOR, p.index))
