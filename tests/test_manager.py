"""The manager against a real Mosquitto and a real SQLite log.

The builder and the notifier are simulated by appending their events to the log (as they
would), the flamelets by publishing retained ActorReports on their topics.
"""

from __future__ import annotations

import pytest

from ember import topics
from ember.bus import Bus
from ember.errors import Conflict, InvalidJobSpec, InvalidRequest, NotFound
from ember.eventlog import open_eventlog
from ember.events import (
    ActorReport,
    ActorsPlaced,
    ActorState,
    Artifact,
    BuildStarted,
    BuildSucceeded,
    NodeInfo,
    NodeStatus,
    Placement,
    Role,
    JobResult,
    RoundCompleted,
    fact_id,
)
from ember.follower import append_and_publish
from ember.manager.app import ManagerService
from ember.manager.settings import ManagerSettings
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)

ROOT = "ember/v1"
SPEC = {"name": "probe", "probe": {"seconds": 1}, "learners": {"count": 2, "min": 2}}
ACTORS = [("agg", Role.AGGREGATOR, "n1", 0), ("l0", Role.LEARNER, "n1", 0), ("l1", Role.LEARNER, "n2", 1)]


@pytest.fixture
async def manager(mqtt_broker, ember_home):
    settings = ManagerSettings.from_env({"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url})
    async with ManagerService(settings) as service:
        yield service


@pytest.fixture
async def client(mqtt_broker):
    async with Bus(mqtt_broker.url, source="test") as bus:
        yield bus


@pytest.fixture
async def eventlog(ember_home):
    async with open_eventlog(f"sqlite:///{ember_home / 'events.sqlite3'}") as log:
        yield log


async def simulate_build_and_placement(client: Bus, eventlog, job: str) -> None:
    """What the builder and the notifier append for a probe job."""
    artifact = Artifact(key="k", python="/usr/bin/python3", code_dir="/tmp")
    for event_id, event in (
        ("build-started", BuildStarted()),
        ("build-done", BuildSucceeded(artifact=artifact, duration_s=0.1)),
        ("placed:1", ActorsPlaced(generation=1, actors=[Placement(actor=f"{job}-{a}", role=r, node=n, index=i) for a, r, n, i in ACTORS])),
    ):
        await append_and_publish(eventlog, client, event.envelope(job, source="test", event_id=f"{job}:{event_id}"))


async def report(client: Bus, job: str, actor: str, state: ActorState, exit_code: int | None = None, log_tail: str = "") -> None:
    name, role, node, _ = next(a for a in ACTORS if a[0] == actor)
    data = ActorReport(actor=f"{job}-{name}", job=job, node=node, role=role, state=state, exit_code=exit_code, log_tail=log_tail)
    topic = topics.ACTOR_STATE.format(ROOT, node=node, actor=f"{job}-{name}")
    await client.publish(topic, client.envelope("ActorReport", data.model_dump(mode="json")), retain=True)


async def state_of(client: Bus, job: str, state: str) -> dict:
    async def check():
        summary = await client.request("jobs.get", {"job": job})
        return summary if summary["state"] == state else None

    return await assert_eventually(check, timeout=15, interval=0.05, message=f"job {job} never reached {state}")


async def test_submit_get_list_round_trip_and_idempotent_retry(manager, client, eventlog):
    reply = await client.request("jobs.submit", {"spec": SPEC, "spec_dir": "/srv/jobs/probe"}, id="0123456789abcdef")
    assert reply == {"job": "probe-01234567", "state": "submitted"}
    again = await client.request("jobs.submit", {"spec": SPEC, "spec_dir": "/srv/jobs/probe"}, id="0123456789abcdef")
    assert again == reply
    summary = await client.request("jobs.get", {"job": "probe-01234567"})
    assert summary["state"] == "submitted" and summary["name"] == "probe"
    assert [t["state"] for t in summary["transitions"]] == ["submitted"]
    listed = await client.request("jobs.list", {})
    assert [j["job"] for j in listed] == ["probe-01234567"]
    events = await eventlog.read()
    assert [(e.id, e.type) for e in events] == [("probe-01234567:submitted", "JobSubmitted")]
    assert events[0].envelope.data["spec_dir"] == "/srv/jobs/probe"
    assert events[0].envelope.data["spec"]["learners"] == {"count": 2, "min": 2}
    with pytest.raises(NotFound):
        await client.request("jobs.get", {"job": "nope-00000000"})
    with pytest.raises(InvalidRequest):
        await client.request("jobs.get", {})
    assert await client.request("nodes.list", {}) == []


async def test_invalid_spec_names_every_bad_field_and_writes_nothing(manager, client, eventlog):
    bad = {"name": "Bad Name", "learners": {"count": 0}, "training": {"rounds": 0, "strategy": "NoSuchStrategy"}, "colour": "red"}
    with pytest.raises(InvalidJobSpec) as err:
        await client.request("jobs.submit", {"spec": bad, "spec_dir": "/x"})
    fields = {d["field"] for d in err.value.details}
    assert {"name", "learners.count", "training.rounds", "training.strategy", "colour"} <= fields
    assert all(d["reason"] for d in err.value.details)
    assert await eventlog.last_seq() == 0


@pytest.mark.parametrize(("code", "field"), [
    ({"path": "/home/me/sensor", "entrypoint": "model:SensorModel"}, "code.path"),
    ({"entrypoint": "model:SensorModel"}, "code.bundle"),
])
async def test_a_spec_over_mqtt_without_bundle_or_git_is_refused_naming_the_field(manager, client, eventlog, code, field):
    with pytest.raises(InvalidJobSpec) as err:
        await client.request("jobs.submit", {"spec": {"name": "sensor", "code": code}, "spec_dir": "/home/me"})
    assert [d["field"] for d in err.value.details] == [field]
    assert "code.git" in err.value.details[0]["reason"]
    git = {"name": "sensor", "code": {"git": "https://git.example.invalid/sensor.git", "entrypoint": "model:SensorModel"}}
    assert (await client.request("jobs.submit", {"spec": git}))["state"] == "submitted"
    assert [e.type for e in await eventlog.read()] == ["JobSubmitted"]


async def test_success_path_from_reports(manager, client, eventlog):
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    await simulate_build_and_placement(client, eventlog, job)
    await state_of(client, job, "deploying")
    for actor in ("agg", "l0", "l1"):
        await report(client, job, actor, ActorState.STARTING)
    await report(client, job, "agg", ActorState.RUNNING)
    await report(client, job, "l0", ActorState.RUNNING)
    assert (await client.request("jobs.get", {"job": job}))["state"] == "deploying"
    await report(client, job, "l1", ActorState.RUNNING)
    await state_of(client, job, "running")
    progress = RoundCompleted(round=1, metrics={"accuracy": 0.9}, learners=[f"{job}-l0", f"{job}-l1"])
    await client.publish(topics.JOB_PROGRESS.format(ROOT, job=job), client.envelope("RoundCompleted", progress.model_dump(mode="json")))
    result = JobResult(metrics={"accuracy": 0.91}, mlflow_run_id="run-1", model_version="3")
    await client.publish(topics.JOB_PROGRESS.format(ROOT, job=job), client.envelope("JobResult", result.model_dump(mode="json")))
    await assert_eventually(lambda: eventlog.get(fact_id(job, "result")), message="the aggregator's result never reached the log")
    for actor in ("l0", "l1", "agg"):
        await report(client, job, actor, ActorState.EXITED, exit_code=0)
    summary = await state_of(client, job, "succeeded")
    assert [t["state"] for t in summary["transitions"]] == ["submitted", "building", "placing", "deploying", "running", "succeeded"]
    assert [r["round"] for r in summary["rounds"]] == [1]
    assert summary["result"]["metrics"] == {"accuracy": 0.91}  # the aggregator's final metrics
    assert (summary["result"]["mlflow_run_id"], summary["result"]["model_version"]) == ("run-1", "3")
    assert (await eventlog.get(fact_id(job, "terminal"))).envelope.data["mlflow_run_id"] == "run-1"
    assert manager.bus.stats["dropped_invalid"] == 0
    assert {a["actor"]: a["state"] for a in summary["actors"]} == {f"{job}-{a}": "exited" for a in ("agg", "l0", "l1")}
    terminal = await eventlog.get(fact_id(job, "terminal"))
    assert terminal.type == "JobSucceeded"
    with pytest.raises(Conflict):
        await client.request("jobs.cancel", {"job": job})


async def test_a_result_reported_after_the_exit_still_reaches_the_job(manager, client, eventlog):
    """The aggregator's `JobResult` and its exit come from two clients; a result that arrives after
    the job succeeded is still shown with it."""
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    await simulate_build_and_placement(client, eventlog, job)
    for actor in ("agg", "l0", "l1"):
        await report(client, job, actor, ActorState.RUNNING)
    for actor in ("l0", "l1", "agg"):
        await report(client, job, actor, ActorState.EXITED, exit_code=0)
    await state_of(client, job, "succeeded")
    result = JobResult(metrics={"loss": 0.1}, mlflow_run_id="run-2", model_version="1")
    await client.publish(topics.JOB_PROGRESS.format(ROOT, job=job), client.envelope("JobResult", result.model_dump(mode="json")))

    async def tracked():
        summary = await client.request("jobs.get", {"job": job})
        return summary if summary["result"].get("mlflow_run_id") else None

    summary = await assert_eventually(tracked, timeout=10, interval=0.05, message="a late result never reached the job")
    assert summary["state"] == "succeeded" and summary["result"]["model_version"] == "1"
    assert summary["result"]["reason"] == "aggregator exited with code 0"


async def test_rounds_recorded_once_and_get_can_ask_for_the_latest_only(manager, client, eventlog):
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    topic = topics.JOB_PROGRESS.format(ROOT, job=job)
    for number in (1, 2, 2, 3):  # round 2 re-sent (a reconnecting aggregator): recorded once
        progress = RoundCompleted(round=number, metrics={"accuracy": 0.5 + number / 10}, learners=[f"{job}-l0"])
        await client.publish(topic, client.envelope("RoundCompleted", progress.model_dump(mode="json")))

    async def three_rounds():
        summary = await client.request("jobs.get", {"job": job})
        return summary if summary["rounds_completed"] == 3 else None

    summary = await assert_eventually(three_rounds, timeout=15, interval=0.05, message="the 3 rounds never reached the job")
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    latest = await client.request("jobs.get", {"job": job, "rounds": 1})
    assert [r["round"] for r in latest["rounds"]] == [3] and latest["rounds_completed"] == 3
    assert latest["rounds"][0]["metrics"] == {"accuracy": 0.8}
    listed = await client.request("jobs.list", {})
    assert listed[0]["rounds_completed"] == 3 and "rounds" not in listed[0]
    with pytest.raises(InvalidRequest) as err:
        await client.request("jobs.get", {"job": job, "rounds": -1})
    assert "rounds" in str(err.value)
    assert [e.id for e in await eventlog.read() if e.type == "RoundCompleted"] == [fact_id(job, "round", n) for n in (1, 2, 3)]


async def test_failing_learner_fails_the_job_with_its_log_tail(manager, client, eventlog):
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    await simulate_build_and_placement(client, eventlog, job)
    for actor in ("agg", "l0", "l1"):
        await report(client, job, actor, ActorState.RUNNING)
    await state_of(client, job, "running")
    tail = "loading data\nTraceback (most recent call last):\nValueError: sensor table is empty"
    await report(client, job, "l1", ActorState.FAILED, exit_code=3, log_tail=tail)
    summary = await state_of(client, job, "failed")
    reason = summary["reason"]
    assert f"learner {job}-l1 on n2 failed with exit code 3" in reason
    assert "1 learners left, minimum 2" in reason
    assert "ValueError: sensor table is empty" in reason
    assert [t["state"] for t in summary["transitions"]][-2:] == ["running", "failed"]


async def test_cancel_and_unknown_reports_are_dropped(manager, client, eventlog):
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    await report(client, "ghost-00000000", "l0", ActorState.RUNNING)  # unknown job: logged, not recorded
    cancelled = await client.request("jobs.cancel", {"job": job})
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == "cancelled by user"
    with pytest.raises(Conflict):
        await client.request("jobs.cancel", {"job": job})
    await assert_eventually(lambda: manager.bus.stats["handled"] >= 4)
    assert [e.type for e in await eventlog.read()] == ["JobSubmitted", "JobCancelled"]


async def test_node_table_and_membership_events(manager, client, eventlog):
    info = NodeInfo(node="n1", cpus=4, memory_mb=2048)
    await client.publish(topics.NODE_INFO.format(ROOT, node="n1"), client.envelope("NodeInfo", info.model_dump(mode="json")), retain=True)
    online = NodeStatus(node="n1", status="online")
    await client.publish(topics.NODE_STATUS.format(ROOT, node="n1"), client.envelope("NodeStatus", online.model_dump(mode="json")), retain=True)

    async def listed(status):
        nodes = await client.request("nodes.list", {})
        return nodes if nodes and nodes[0]["status"] == status else None

    nodes = await assert_eventually(lambda: listed("online"), timeout=10)
    assert nodes[0]["node"] == "n1" and nodes[0]["info"]["cpus"] == 4
    offline = NodeStatus(node="n1", status="offline")
    await client.publish(topics.NODE_STATUS.format(ROOT, node="n1"), client.envelope("NodeStatus", offline.model_dump(mode="json")), retain=True)
    await assert_eventually(lambda: listed("offline"), timeout=10)
    events = await eventlog.read()
    assert [e.type for e in events] == ["NodeJoined", "NodeLost"]
    assert events[0].id == f"n1:joined:{info.started.isoformat()}"
    assert events[1].id == f"n1:lost:{offline.since.isoformat()}"


async def test_malformed_payloads_on_every_topic_are_dropped_and_counted(manager, client, eventlog):
    junk = [b"not json", b'{"type": "NodeStatus", "v": 2, "data": {}}', b'{"id": "1"}', b"\xff" * 1_000_000]
    bad_data = client.envelope("ActorReport", {"bogus": 1})  # a valid envelope whose data is not
    raw_only = [topics.REQUEST.format(ROOT, action="jobs.submit"), topics.EVENT.format(ROOT, aggregate="job", type="JobSubmitted")]
    with_data = [
        topics.ACTOR_STATE.format(ROOT, node="n1", actor="a1"),
        topics.JOB_PROGRESS.format(ROOT, job="j1"),
        topics.NODE_INFO.format(ROOT, node="n1"),
        topics.NODE_STATUS.format(ROOT, node="n1"),
    ]
    for topic in raw_only + with_data:
        for payload in junk:
            await client.publish(topic, payload)
    for topic in with_data:
        await client.publish(topic, bad_data)
    expected = len(junk) * (len(raw_only) + len(with_data)) + len(with_data)
    await assert_eventually(lambda: manager.bus.stats["dropped_invalid"] == expected, timeout=15)
    assert manager.bus.stats["handler_errors"] == 0
    assert await client.request("jobs.list", {}) == []
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    assert (await client.request("jobs.get", {"job": job}))["state"] == "submitted"
    assert [e.type for e in await eventlog.read()] == ["JobSubmitted"]
