"""Placement (`ember.notifier.placement`) as pure functions: properties over generated clusters
(hypothesis) and examples of the reasons a job waits or cannot be placed.

The properties check the results against facts computed here independently: each node's room
(announced capacity times the overcommit factor, minus the actors of other jobs), which nodes may
take learners, and whether any placement exists at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ember.events import ActorState, NodeInfo, Placement, Role
from ember.jobspec import ResourceSpec
from ember.notifier.placement import EPSILON, JobNeeds, NoCapacity, Room, actor_id, lost_actors, place_job, replace_lost
from ember.projection import ActorView, JobState, JobView, Projection

pytestmark = pytest.mark.timeout(120)
PROPERTIES = settings(max_examples=100, deadline=None, database=None)
EPS = EPSILON
TAGS = ("turbine", "pump")
LIVE = (ActorState.PENDING, ActorState.STARTING, ActorState.RUNNING)
ROLES = {"both": [Role.AGGREGATOR, Role.LEARNER], "aggregator": [Role.AGGREGATOR], "learner": [Role.LEARNER]}


# --- building clusters and jobs ----------------------------------------------------------------

def node(name: str, *, cpus: int = 2, memory_mb: int = 4096, roles: str = "both", runtimes: tuple[str, ...] = ("process",),
         data: dict[str, int] | None = None) -> NodeInfo:
    return NodeInfo(node=name, cpus=cpus, memory_mb=memory_mb, capabilities=ROLES[roles], runtimes=list(runtimes), data=data or {})


def spec(learners: int, *, cpus: float = 1.0, memory_mb: int = 1024, tags: tuple[str, ...] = (), runtime: str = "process") -> dict:
    return {"name": "job", "learners": {"count": learners}, "data": {"tags": list(tags)},
            "resources": {"cpus": cpus, "memory_mb": memory_mb}, "runtime": runtime}


def placing(job_id: str, job_spec: dict) -> JobView:
    return JobView(job_id, "job", job_spec, "", datetime.now(UTC), state=JobState.PLACING)


def running(job_id: str, job_spec: dict, placements: list[Placement], states: dict[str, ActorState] | None = None) -> JobView:
    """A job at generation 1 with `placements`, its actors in `states` (default running)."""
    job = JobView(job_id, "job", job_spec, "", datetime.now(UTC), state=JobState.RUNNING, generation=1)
    for p in placements:
        state = (states or {}).get(p.actor, ActorState.RUNNING)
        job.actors[p.actor] = ActorView(p.actor, p.role, p.node, p.index, 1, state)
    return job


def projection_of(*jobs: JobView) -> Projection:
    projection = Projection()
    for job in jobs:
        projection.jobs[job.id] = job
    return projection


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeInfo]:
    names = [f"n{i}" for i in range(draw(st.integers(1, 7)))]
    return [
        node(name, cpus=draw(st.integers(1, 8)), memory_mb=draw(st.sampled_from([1024, 2048, 4096, 8192])),
             roles=draw(st.sampled_from(["both", "both", "aggregator", "learner"])),
             runtimes=draw(st.sampled_from([("process",), ("process", "docker"), ("process", "docker"), ("docker",)])),
             data=draw(st.dictionaries(st.sampled_from(TAGS), st.integers(0, 50), max_size=2)))
        for name in names
    ]


@st.composite
def job_specs(draw: st.DrawFn) -> dict:
    return spec(draw(st.integers(1, 6)), cpus=draw(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0])),
                memory_mb=draw(st.sampled_from([256, 512, 1024, 2048])),
                tags=tuple(draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2))),
                runtime=draw(st.sampled_from(["process", "process", "process", "docker"])))


@st.composite
def other_jobs(draw: st.DrawFn, nodes: list[str]) -> list[JobView]:
    """Live jobs already placed on the cluster (some of their actors finished)."""
    jobs = []
    for j in range(draw(st.integers(0, 2))):
        job_spec = spec(1, cpus=draw(st.sampled_from([0.5, 1.0])), memory_mb=draw(st.sampled_from([256, 1024])))
        actors = draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from([*LIVE, ActorState.EXITED, ActorState.FAILED])),
                               max_size=4))
        placements = [Placement(actor=f"o{j}-{i}", role=Role.LEARNER, node=n, index=i) for i, (n, _) in enumerate(actors)]
        jobs.append(running(f"other-{j}", job_spec, placements, {p.actor: s for p, (_, s) in zip(placements, actors, strict=True)}))
    return jobs


# --- facts computed independently of placement.py ----------------------------------------------

@dataclass(frozen=True)
class Needs:
    cpus: float
    memory_mb: int
    runtime: str
    tags: tuple[str, ...]
    learners: int

    @classmethod
    def of(cls, job_spec: dict) -> Needs:
        resources = ResourceSpec.model_validate(job_spec["resources"])
        return cls(resources.cpus, resources.memory_mb, job_spec["runtime"], tuple(job_spec["data"]["tags"]), job_spec["learners"]["count"])


def reserved(jobs: list[JobView], *, skip: str = "") -> dict[str, list[float]]:
    """node -> [cpus, memory] held by the unfinished actors of `jobs` (but job `skip`)."""
    out: dict[str, list[float]] = {}
    for job in jobs:
        if job.id == skip:
            continue
        needs = Needs.of(job.spec)
        for actor in job.current_actors():
            if actor.state in LIVE:
                used = out.setdefault(actor.node, [0.0, 0.0])
                used[0] += needs.cpus
                used[1] += needs.memory_mb
    return out


def count_fitting(cpus: float, memory: float, needs: Needs) -> int:
    """How many actors fit, by taking them one at a time."""
    count = 0
    while count < 10_000 and cpus - needs.cpus * (count + 1) >= -EPS and memory - needs.memory_mb * (count + 1) >= 0:
        count += 1
    return count


def eligible(infos: list[NodeInfo], needs: Needs) -> list[NodeInfo]:
    return [info for info in infos if needs.runtime in info.runtimes]


def learner_nodes(infos: list[NodeInfo], needs: Needs) -> set[str]:
    """Where learners may go: learner nodes with the runtime, only those holding the data if any does."""
    learners = [info for info in eligible(infos, needs) if Role.LEARNER in info.capabilities]
    holding = {info.node for info in learners if any(info.data.get(tag, 0) > 0 for tag in needs.tags)}
    return holding or {info.node for info in learners}


def free_slots(infos: list[NodeInfo], used: dict[str, list[float]], needs: Needs, overcommit: float) -> dict[str, int]:
    out = {}
    for info in eligible(infos, needs):
        cpus, memory = used.get(info.node, [0.0, 0.0])
        out[info.node] = count_fitting(info.cpus * overcommit - cpus, info.memory_mb * overcommit - memory, needs)
    return out


def placeable(infos: list[NodeInfo], slots: dict[str, int], needs: Needs, learners: int, aggregator: bool) -> bool:
    """Whether any placement of `learners` learners (and an aggregator) exists."""
    pool = learner_nodes(infos, needs)
    room = sum(slots[n] for n in pool)
    if not aggregator:
        return room >= learners
    seats = [info.node for info in eligible(infos, needs) if Role.AGGREGATOR in info.capabilities and slots[info.node] > 0]
    return any(room - (seat in pool) >= learners for seat in seats)


def check_fits(placed: list[Placement], infos: list[NodeInfo], used: dict[str, list[float]], needs: Needs, overcommit: float) -> None:
    """Every actor on a node that may take it, and no node beyond its capacity (cpus and memory)."""
    by_name = {info.node: info for info in infos}
    load: dict[str, list[float]] = {}
    for p in placed:
        info = by_name[p.node]
        assert needs.runtime in info.runtimes, f"{p.actor} on {p.node}, which lacks the {needs.runtime} runtime"
        assert p.role in info.capabilities, f"{p.actor} ({p.role}) on {p.node}, which cannot take that role"
        if p.role == Role.LEARNER:
            assert p.node in learner_nodes(infos, needs), f"{p.actor} on {p.node}, which holds none of {needs.tags}"
        held = load.setdefault(p.node, list(used.get(p.node, [0.0, 0.0])))
        held[0] += needs.cpus
        held[1] += needs.memory_mb
    for name, (cpus, memory) in load.items():
        info = by_name[name]
        assert cpus <= info.cpus * overcommit + EPS, f"{name}: {cpus} cpus reserved of {info.cpus} x {overcommit}"
        assert memory <= info.memory_mb * overcommit + EPS, f"{name}: {memory} MB reserved of {info.memory_mb} x {overcommit}"


# --- properties ----------------------------------------------------------------------------------

@PROPERTIES
@given(data=st.data(), infos=clusters(), job_spec=job_specs(), overcommit=st.sampled_from([0.5, 1.0, 1.5, 2.0]))
def test_place_job_fits_every_node_and_finds_a_placement_whenever_one_exists(data, infos, job_spec, overcommit):
    others = data.draw(other_jobs([info.node for info in infos]))
    job = placing("job-1", job_spec)
    needs = Needs.of(job_spec)
    used = reserved(others)
    slots = free_slots(infos, used, needs, overcommit)
    try:
        placed = place_job(job, projection_of(*others, job), infos, overcommit=overcommit)
    except NoCapacity as exc:
        assert not placeable(infos, slots, needs, needs.learners, aggregator=True), f"a placement exists, yet: {exc}"
        idle = free_slots(infos, {}, needs, overcommit)
        if placeable(infos, idle, needs, needs.learners, aggregator=True):
            assert str(exc).endswith("other jobs hold the rest: waiting for them to end"), exc
        else:
            assert str(exc).endswith("not satisfiable with the nodes online now"), exc
        return
    assert sorted(p.actor for p in placed) == sorted([actor_id("job-1", Role.AGGREGATOR, 0, 1)] +
                                                     [actor_id("job-1", Role.LEARNER, i, 1) for i in range(needs.learners)])
    check_fits(placed, infos, used, needs, overcommit)
    # spread: a learner node holds two actors more than another only when the other is full
    pool = learner_nodes(infos, needs)
    actors = {n: sum(p.node == n for p in placed) for n in pool}
    for a in pool:
        for b in pool:
            if actors[a] >= actors[b] + 2:
                assert slots[b] - actors[b] == 0, f"{a} has {actors[a]} actors while {b} has {actors[b]} and room for more"


@PROPERTIES
@given(data=st.data(), infos=clusters(), job_spec=job_specs(), overcommit=st.sampled_from([1.0, 2.0]))
def test_replace_lost_keeps_survivors_and_never_uses_a_lost_node(data, infos, job_spec, overcommit):
    needs = Needs.of(job_spec)
    names = [info.node for info in infos]
    first = [Placement(actor=actor_id("job-1", Role.AGGREGATOR, 0, 1), role=Role.AGGREGATOR, node=data.draw(st.sampled_from(names)), index=0)]
    first += [Placement(actor=actor_id("job-1", Role.LEARNER, i, 1), role=Role.LEARNER, node=data.draw(st.sampled_from(names)), index=i)
              for i in range(needs.learners)]
    states = {p.actor: data.draw(st.sampled_from([*LIVE, ActorState.RUNNING, ActorState.EXITED, ActorState.FAILED])) for p in first}
    job = running("job-1", job_spec, first, states)
    others = data.draw(other_jobs([info.node for info in infos]))
    gone = set(data.draw(st.lists(st.sampled_from(sorted({p.node for p in first})), min_size=1, unique=True)))
    lost = lost_actors(job, gone)
    assume(lost)
    # the nodes that went are offline; a lost actor's node stays fenced even if listed online again
    online = infos if data.draw(st.booleans()) else [info for info in infos if info.node not in gone]
    fenced = {a.node for a in lost}
    usable = [info for info in online if info.node not in fenced]
    kept = [a for a in job.current_actors() if a not in lost]
    used = reserved(others)
    for actor in kept:
        if actor.state in LIVE:
            held = used.setdefault(actor.node, [0.0, 0.0])
            held[0] += needs.cpus
            held[1] += needs.memory_mb
    slots = free_slots(usable, used, needs, overcommit)
    lost_learners = sum(a.role == Role.LEARNER for a in lost)
    lost_aggregator = any(a.role == Role.AGGREGATOR for a in lost)
    try:
        placed = replace_lost(job, projection_of(*others, job), online, lost, overcommit=overcommit)
    except NoCapacity as exc:
        assert not placeable(usable, slots, needs, lost_learners, lost_aggregator), f"a re-placement exists, yet: {exc}"
        return
    by_actor = {p.actor: p for p in placed}
    for actor in kept:
        assert by_actor.pop(actor.actor).node == actor.node, f"{actor.actor} moved"
    assert sorted(by_actor) == sorted(actor_id("job-1", a.role, a.index, 2) for a in lost)
    new = list(by_actor.values())
    assert not {p.node for p in new} & fenced, f"re-placed on a lost actor's node: {new}"
    assert {p.node for p in new} <= {info.node for info in online}, f"re-placed on an offline node: {new}"
    check_fits(new, usable, used, needs, overcommit)


@PROPERTIES
@given(cpus=st.integers(0, 320).map(lambda c: c / 20), memory=st.integers(0, 16_384),
       need_cpus=st.sampled_from([0.1, 0.25, 0.5, 1.0, 1.5, 3.0]), need_memory=st.integers(16, 4096))
def test_a_room_holds_as_many_actors_as_both_its_cpus_and_its_memory_allow(cpus, memory, need_cpus, need_memory):
    needs = JobNeeds(1, (), need_cpus, need_memory, "process", None)
    expected = count_fitting(cpus, memory, Needs(need_cpus, need_memory, "process", (), 1))
    assert Room("n", cpus, memory, frozenset(Role)).slots(needs) == expected


@PROPERTIES
@given(infos=clusters(), job_spec=job_specs(), factor=st.sampled_from([0.5, 1.0, 1.5]))
def test_a_larger_overcommit_never_turns_a_placement_into_no_capacity(infos, job_spec, factor):
    job = placing("job-1", job_spec)
    try:
        place_job(job, projection_of(job), infos, overcommit=factor)
    except NoCapacity:
        return
    place_job(job, projection_of(job), infos, overcommit=factor * 2)


# --- examples -------------------------------------------------------------------------------------

def test_learners_spread_one_per_node_and_the_aggregator_avoids_them():
    infos = [node("n1", cpus=4), node("n2", cpus=4), node("n3", cpus=4), node("n4", cpus=4)]
    placed = place_job(placing("j", spec(3)), Projection(), infos)
    assert [(p.actor, p.node) for p in placed] == [("j-learner-0", "n1"), ("j-learner-1", "n2"), ("j-learner-2", "n3"),
                                                  ("j-aggregator", "n4")]


def test_learners_double_up_on_the_nodes_holding_the_data():
    infos = [node("n1", cpus=4, data={"turbine": 100}), node("n2", cpus=4), node("n3", cpus=4, data={"turbine": 5, "pump": 1})]
    placed = place_job(placing("j", spec(3, tags=("turbine",))), Projection(), infos)
    assert sorted(p.node for p in placed if p.role == Role.LEARNER) == ["n1", "n1", "n3"]
    assert [p.node for p in placed if p.role == Role.AGGREGATOR] == ["n2"]


def test_without_any_node_holding_the_tags_learners_go_anywhere():
    placed = place_job(placing("j", spec(2, tags=("turbine",))), Projection(), [node("n1"), node("n2")])
    assert len(placed) == 3


def test_the_aggregator_takes_its_node_first_when_the_learners_would_fill_it():
    infos = [node("a", cpus=1, roles="both"), node("b", cpus=1, roles="learner")]
    placed = place_job(placing("j", spec(1)), Projection(), infos)
    assert {p.actor: p.node for p in placed} == {"j-learner-0": "b", "j-aggregator": "a"}


def test_docker_jobs_go_only_to_nodes_announcing_docker():
    infos = [node("n1", cpus=8), node("n2", cpus=8, runtimes=("process", "docker")), node("n3", cpus=8, runtimes=("docker",))]
    placed = place_job(placing("j", spec(3, runtime="docker")), Projection(), infos)
    assert {p.node for p in placed} == {"n2", "n3"}


def test_no_docker_node_says_which_nodes_lack_the_runtime():
    with pytest.raises(NoCapacity) as caught:
        place_job(placing("j", spec(2, runtime="docker")), Projection(), [node("n1"), node("n2")])
    assert str(caught.value) == (
        "needs 2 learners on learner nodes (1 cpu and 1024 MB each, docker runtime): 0 such nodes online, with room for 0; "
        "n1, n2 lack the docker runtime; not satisfiable with the nodes online now")


def test_more_learners_than_nodes_names_what_is_short_not_the_cpus_it_took():
    infos = [node("agg", cpus=1, roles="aggregator")] + [node(f"n{i}", cpus=1, roles="learner", data={"turbine": 10}) for i in (1, 2, 3)]
    with pytest.raises(NoCapacity) as caught:
        place_job(placing("j", spec(5, tags=("turbine",))), Projection(), infos)
    assert str(caught.value) == (
        "needs 5 learners on learner nodes holding tag turbine (1 cpu and 1024 MB each, process runtime): "
        "3 such nodes online (n1, n2, n3), with room for 3; not satisfiable with the nodes online now")


def test_room_held_by_other_jobs_makes_the_job_wait():
    infos = [node("n1", cpus=2), node("n2", cpus=2)]
    busy = running("busy", spec(1), [Placement(actor="busy-0", role=Role.LEARNER, node="n1", index=0)])
    job = placing("j", spec(3))
    with pytest.raises(NoCapacity) as caught:
        place_job(job, projection_of(busy, job), infos)
    assert str(caught.value) == (
        "needs 1 aggregator on an aggregator node (1 cpu and 1024 MB each, process runtime) beside its 3 learners: "
        "2 such nodes online (n1, n2), none with room left; other jobs hold the rest: waiting for them to end")
    # once the other job's actor has finished, its room is free again
    busy.actors["busy-0"].state = ActorState.EXITED
    assert len(place_job(job, projection_of(busy, job), infos)) == 4


def test_an_actor_larger_than_every_node_says_so():
    with pytest.raises(NoCapacity, match="no online node with the process runtime is large enough for one actor; "
                                         "not satisfiable with the nodes online now$"):
        place_job(placing("j", spec(1, cpus=8)), Projection(), [node("n1", cpus=4), node("n2", cpus=4)])


def test_overcommit_multiplies_announced_cpus_and_memory():
    infos = [node("n1", cpus=2, memory_mb=2048)]
    job = placing("j", spec(3))  # 4 actors of 1 cpu and 1024 MB
    with pytest.raises(NoCapacity, match=r"needs 3 learners .*: 1 such node online \(n1\), with room for 2; not satisfiable"):
        place_job(job, projection_of(job), infos)
    assert {p.node for p in place_job(job, projection_of(job), infos, overcommit=2)} == {"n1"}


def test_memory_decides_when_cpus_are_plenty():
    infos = [node("n1", cpus=64, memory_mb=4096)]
    assert len(place_job(placing("j", spec(3, memory_mb=1024)), Projection(), infos)) == 4  # exactly 4096 MB
    with pytest.raises(NoCapacity, match=r"needs 1 aggregator .*beside its 4 learners: 1 such node online \(n1\), none with room left"):
        place_job(placing("j", spec(4, memory_mb=1024)), Projection(), infos)
    assert len(place_job(placing("j", spec(5, memory_mb=1024)), Projection(), infos, overcommit=1.5)) == 6


def test_re_placement_moves_lost_actors_to_a_spare_node_and_fences_the_lost_one():
    infos = [node(f"n{i}", cpus=1) for i in range(1, 6)]
    first = place_job(placing("j", spec(3)), Projection(), infos)
    job = running("j", spec(3), first)
    victim = next(p.node for p in first if p.actor == "j-learner-1")
    lost = lost_actors(job, {victim})
    placed = replace_lost(job, projection_of(job), infos, lost)  # the lost node still listed online
    moved = {p.actor: p.node for p in placed if p.actor not in job.actors}
    assert moved == {"j-learner-1-g2": "n5"}
    with pytest.raises(NoCapacity, match="needs 1 learner on learner nodes"):
        replace_lost(job, projection_of(job), [info for info in infos if info.node != "n5"], lost)
