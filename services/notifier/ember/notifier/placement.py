"""Where a job's actors go: pure functions of the online nodes' info and the projection.

Rules (deterministic for the same inputs; nothing here mutates its arguments):
- only online nodes that announce the job's runtime (`NodeInfo.runtimes`), the actor's role
  (`NodeInfo.capabilities`) and every label of the job's `placement.labels` are used;
- a node's room is its announced cpus and memory, each times the overcommit factor, minus what the
  live actors of other jobs reserve on it; every actor of a job reserves the job's `resources`
  (cpus, memory_mb), and an actor fits while both its cpus and its memory fit in what is left;
- learners first, spread one per node before any node takes a second (fewest of this job's
  actors first, then nodes that cannot take the aggregator, then by name);
- when the job names data tags and some eligible learner nodes hold rows for one of them,
  learners go only to those nodes (doubling up there rather than landing on a node without the
  data); when none does, learners are placed anyway and fail with `no data for tags` (the
  failure then names the problem, instead of the job waiting for data that may never come);
- the aggregator goes to the aggregator-capable node with the fewest of this job's actors; when
  the learners' spread leaves no aggregator node with room, the aggregator takes a node first and
  the learners are spread around it: a placement is found whenever one exists;
- a re-placement keeps the surviving actors where they are and never uses a node of a lost actor.
Not enough room raises `NoCapacity`, whose message names what is short (which actors, on which
kind of node, how many such nodes are online, how many actors they have room for, which online
nodes lack the job's runtime) and whether the online nodes could hold the job once other jobs
end or not at all (it needs more or larger nodes). Either way the notifier tries again on every
change until its placement timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from ember.events import ActorState, NodeInfo, Placement, Role
from ember.jobspec import DataSpec, LearnerSpec, PlacementSpec, ProbeSpec, ResourceSpec
from ember.projection import ActorView, JobView, Projection
from ember.serving import matches

EPSILON = 1e-9
"""Slack when comparing cpus, which are floats summed from fractions (0.1 + 0.2 > 0.3)."""


class NoCapacity(Exception):
    """Not enough online nodes with room for the job's actors; the message says what is short."""


@dataclass(frozen=True)
class JobNeeds:
    """The parts of a job spec placement and desired state look at."""

    learners: int
    tags: tuple[str, ...]
    cpus: float
    memory_mb: int
    runtime: str
    probe: ProbeSpec | None
    labels: tuple[tuple[str, str], ...] = ()
    """Labels a node must carry to take the job's actors (`placement.labels`)."""

    @classmethod
    def of(cls, job: JobView) -> JobNeeds:
        """From the spec in the log (already validated by the manager); ValueError if unusable."""
        spec = job.spec
        try:
            learners = LearnerSpec.model_validate(spec.get("learners") or {})
            data = DataSpec.model_validate(spec.get("data") or {})
            resources = ResourceSpec.model_validate(spec.get("resources") or {})
            probe = ProbeSpec.model_validate(spec["probe"]) if spec.get("probe") is not None else None
            placement = PlacementSpec.model_validate(spec.get("placement") or {})
        except (ValidationError, AttributeError, TypeError) as exc:
            raise ValueError(f"unusable job spec: {exc}") from None
        runtime = str(spec.get("runtime") or "process")
        return cls(learners.count, tuple(data.tags), resources.cpus, resources.memory_mb, runtime, probe,
                   tuple(sorted(placement.labels.items())))


@dataclass(frozen=True)
class Wanted:
    """One actor to place."""

    role: Role
    index: int
    actor: str


@dataclass(frozen=True)
class Room:
    """What one eligible node offers one job: free cpus and memory, roles, whether it holds the data."""

    node: str
    cpus: float
    memory_mb: float
    roles: frozenset[Role]
    holds_data: bool = False
    actors: int = 0
    """This job's actors already on the node (kept by a re-placement)."""

    def slots(self, needs: JobNeeds) -> int:
        """How many of the job's actors fit: the fewer of what the cpus and the memory allow."""
        if self.cpus + EPSILON < needs.cpus or self.memory_mb < needs.memory_mb:
            return 0
        return min(int((self.cpus + EPSILON) // needs.cpus), int(self.memory_mb // needs.memory_mb))


def capacity(info: NodeInfo, overcommit: float) -> tuple[float, float]:
    """A node's cpus and memory (MB) for placement: what it announced times `overcommit`."""
    return info.cpus * overcommit, info.memory_mb * overcommit


def usage(projection: Projection, *, exclude: str | None = None) -> dict[str, tuple[float, float]]:
    """cpus and memory reserved per node by the live actors of non-terminal jobs (but `exclude`)."""
    used: dict[str, tuple[float, float]] = {}
    for job in projection.jobs.values():
        if job.id == exclude or job.state.terminal or job.generation == 0:
            continue
        try:
            needs = JobNeeds.of(job)
        except ValueError:
            continue
        for actor in job.current_actors():
            if actor.state.terminal:
                continue
            cpus, mem = used.get(actor.node, (0.0, 0.0))
            used[actor.node] = (cpus + needs.cpus, mem + needs.memory_mb)
    return used


def rooms(online: Iterable[NodeInfo], used: Mapping[str, tuple[float, float]], needs: JobNeeds, overcommit: float,
          *, kept: Iterable[ActorView] = ()) -> list[Room]:
    """A room on each online node that offers the job's runtime; `kept` actors of the job take their share."""
    on_node: dict[str, int] = {}
    for actor in kept:
        if not actor.state.terminal:
            on_node[actor.node] = on_node.get(actor.node, 0) + 1
    out = []
    for info in online:
        if needs.runtime not in info.runtimes or not matches(info.labels, dict(needs.labels)):
            continue
        cpus, mem = capacity(info, overcommit)
        used_cpus, used_mem = used.get(info.node, (0.0, 0.0))
        mine = on_node.get(info.node, 0)
        holds = any(info.data.get(tag, 0) > 0 for tag in needs.tags)
        out.append(Room(info.node, cpus - used_cpus - mine * needs.cpus, mem - used_mem - mine * needs.memory_mb,
                        frozenset(info.capabilities), holds, mine))
    return out


def learner_pool(available: Sequence[Room], needs: JobNeeds) -> list[Room]:
    """The rooms learners may use: learner nodes, only those holding the job's data if any does."""
    learners = [room for room in available if Role.LEARNER in room.roles]
    with_data = [room for room in learners if room.holds_data]
    return with_data or learners


def _spread(count: int, pool: Sequence[Room], slots: Mapping[str, int], actors: Mapping[str, int]) -> list[str] | None:
    """Nodes for `count` learners, each to the pool node with a free slot and the fewest actors (of
    those, nodes that cannot take the aggregator first, then by name); None if they do not fit."""
    free, held = dict(slots), dict(actors)
    order = {room.node: (Role.AGGREGATOR in room.roles, room.node) for room in pool}
    out = []
    for _ in range(count):
        fitting = [room.node for room in pool if free[room.node] > 0]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: (held[n], order[n]))
        free[node] -= 1
        held[node] += 1
        out.append(node)
    return out


def _seat(spread: list[str], candidates: Sequence[str], pool: Sequence[Room], slots: Mapping[str, int],
          actors: Mapping[str, int]) -> tuple[str, list[str]] | None:
    """The aggregator's node and the learners' nodes, or None if the aggregator cannot fit.

    Beside the spread, on the aggregator node with room and the fewest actors. When the spread
    left no such node, every aggregator node with room is a learner node (one outside the pool
    would still have room), so seating the aggregator first costs the learners one slot wherever
    it goes: it takes the first such node and the learners are spread again, or nothing fits.
    """
    after = Counter(spread)
    beside = [node for node in candidates if slots[node] > after[node]]
    if beside:
        return min(beside, key=lambda n: (actors[n] + after[n], n)), spread
    seats = sorted((node for node in candidates if slots[node] > 0), key=lambda n: (actors[n], n))
    if not seats:
        return None
    seat = seats[0]
    again = _spread(len(spread), pool, {**slots, seat: slots[seat] - 1}, {**actors, seat: actors[seat] + 1})
    return (seat, again) if again is not None else None


def assign(wanted: Sequence[Wanted], available: Sequence[Room], needs: JobNeeds) -> list[Placement]:
    """Place `wanted` (learners and at most one aggregator) on `available`: learners by index, then the aggregator."""
    learners = sorted((w for w in wanted if w.role == Role.LEARNER), key=lambda w: w.index)
    aggregators = [w for w in wanted if w.role == Role.AGGREGATOR]
    if len(aggregators) > 1:
        raise ValueError("a job has one aggregator")
    pool = learner_pool(available, needs)
    slots = {room.node: room.slots(needs) for room in available}
    actors = {room.node: room.actors for room in available}
    spread = _spread(len(learners), pool, slots, actors)
    if spread is None:
        raise NoCapacity(_learners_short(len(learners), pool, slots, needs))
    seat = None
    if aggregators:
        candidates = [room.node for room in available if Role.AGGREGATOR in room.roles]
        seated = _seat(spread, candidates, pool, slots, actors)
        if seated is None:
            raise NoCapacity(_aggregator_short(len(learners), candidates, needs))
        seat, spread = seated
    placements = [Placement(actor=w.actor, role=w.role, node=node, index=w.index) for w, node in zip(learners, spread, strict=True)]
    if seat is not None:
        placements.append(Placement(actor=aggregators[0].actor, role=Role.AGGREGATOR, node=seat, index=aggregators[0].index))
    return placements


def actor_id(job: str, role: Role, index: int, generation: int) -> str:
    """`{job}-aggregator`, `{job}-learner-{i}`, and `-g{generation}` for re-placements."""
    base = f"{job}-aggregator" if role == Role.AGGREGATOR else f"{job}-learner-{index}"
    return base if generation <= 1 else f"{base}-g{generation}"


def place_job(job: JobView, projection: Projection, online: Sequence[NodeInfo], *, overcommit: float = 1.0) -> list[Placement]:
    """Generation 1: one aggregator and `learners.count` learners."""
    needs = JobNeeds.of(job)
    wanted = [Wanted(Role.AGGREGATOR, 0, actor_id(job.id, Role.AGGREGATOR, 0, 1))]
    wanted += [Wanted(Role.LEARNER, i, actor_id(job.id, Role.LEARNER, i, 1)) for i in range(needs.learners)]
    return _placed(wanted, online, usage(projection, exclude=job.id), needs, overcommit)


def lost_actors(job: JobView, offline: set[str]) -> list[ActorView]:
    """Current actors on offline nodes that had not finished (an actor that exited ok is done)."""
    return [a for a in job.current_actors() if a.node in offline and a.state not in (ActorState.EXITED, ActorState.FAILED)]


def replace_lost(job: JobView, projection: Projection, online: Sequence[NodeInfo], lost: Sequence[ActorView], *,
                 overcommit: float = 1.0, fenced: set[str] | None = None) -> list[Placement]:
    """Generation + 1: the surviving actors keep their ids and nodes; the lost ones get new ids
    on nodes other than `fenced` (default: the lost actors' nodes)."""
    needs = JobNeeds.of(job)
    generation = job.generation + 1
    lost_ids = {a.actor for a in lost}
    fenced = {a.node for a in lost} if fenced is None else fenced
    kept = [a for a in job.current_actors() if a.actor not in lost_ids]
    usable = [info for info in online if info.node not in fenced]
    wanted = [Wanted(a.role, a.index, actor_id(job.id, a.role, a.index, generation)) for a in lost]
    placed = _placed(wanted, usable, usage(projection, exclude=job.id), needs, overcommit, kept=kept)
    survivors = [Placement(actor=a.actor, role=a.role, node=a.node, index=a.index) for a in kept]
    return sorted(survivors + placed, key=lambda p: (p.role != Role.AGGREGATOR, p.index))


def _placed(wanted: Sequence[Wanted], online: Sequence[NodeInfo], used: Mapping[str, tuple[float, float]], needs: JobNeeds,
            overcommit: float, *, kept: Sequence[ActorView] = ()) -> list[Placement]:
    """`assign` on the nodes' room now; when short, say whether the nodes could hold it once other jobs end."""
    try:
        return assign(wanted, rooms(online, used, needs, overcommit, kept=kept), needs)
    except NoCapacity as short:
        reason = str(short)
        lacking = sorted(info.node for info in online if needs.runtime not in info.runtimes)
        if lacking:
            reason += f"; {_names(lacking)} lack the {needs.runtime} runtime"
        idle = rooms(online, {}, needs, overcommit, kept=kept)
        try:
            assign(wanted, idle, needs)
        except NoCapacity:
            if idle and all(room.slots(needs) == 0 for room in idle):
                reason += f"; no online node with the {needs.runtime} runtime is large enough for one actor"
            raise NoCapacity(f"{reason}; not satisfiable with the nodes online now") from None
        raise NoCapacity(f"{reason}; other jobs hold the rest: waiting for them to end") from None


def _each(needs: JobNeeds) -> str:
    labels = "".join(f", label {key}={value}" for key, value in needs.labels)
    return f"{needs.cpus:g} cpu{'' if needs.cpus == 1 else 's'} and {needs.memory_mb} MB each, {needs.runtime} runtime{labels}"


def _names(nodes: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _learners_short(count: int, pool: Sequence[Room], slots: Mapping[str, int], needs: JobNeeds) -> str:
    kind = "learner nodes"
    if needs.tags and any(room.holds_data for room in pool):
        kind += f" holding {'tag' if len(needs.tags) == 1 else 'one of the tags'} {', '.join(needs.tags)}"
    room_for = sum(slots[room.node] for room in pool)
    online = f" ({_names([room.node for room in pool])})" if pool else ""
    return (f"needs {count} learner{'' if count == 1 else 's'} on {kind} ({_each(needs)}): "
            f"{len(pool)} such node{'' if len(pool) == 1 else 's'} online{online}, with room for {room_for}")


def _aggregator_short(learners: int, candidates: Sequence[str], needs: JobNeeds) -> str:
    beside = f" beside its {learners} learner{'' if learners == 1 else 's'}" if learners else ""
    online = f" ({_names(candidates)})" if candidates else ""
    return (f"needs 1 aggregator on an aggregator node ({_each(needs)}){beside}: "
            f"{len(candidates)} such node{'' if len(candidates) == 1 else 's'} online{online}, none with room left")
