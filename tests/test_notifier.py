"""Notifier against a real Mosquitto and a real SQLite event log; nodes are simulated by
publishing their retained info/status, and the builder's events are appended directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember import topics
from ember.bus import Bus, Message
from ember.eventlog import open_eventlog
from ember.events import (
    ActorsPlaced, Artifact, BuildStarted, BuildSucceeded, DesiredState, JobCancelled, JobSubmitted, NodeInfo, NodeStatus,
    Role, fact_id,
)
from ember.follower import append_and_publish
from ember.jobspec import load_spec_file
from ember.notifier.app import Notifier
from ember.notifier.settings import NotifierSettings
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)
ROOT = "ember/v1"
PROBE_JOB = Path(__file__).parents[1] / "examples" / "probe" / "job.yaml"


class Cluster:
    """Test side of the bus: simulated nodes, the builder's events, the desired states seen."""

    def __init__(self, bus: Bus, eventlog) -> None:
        self.bus, self.eventlog = bus, eventlog
        self.desired: dict[str, DesiredState] = {}
        bus.subscribe(topics.NODE_DESIRED, self._on_desired)

    async def _on_desired(self, message: Message) -> None:
        state = DesiredState.model_validate(message.envelope.data)
        self.desired[state.node] = state

    async def node(self, node: str, *, cpus: int = 2, status: str = "online", roles=(Role.AGGREGATOR, Role.LEARNER),
                   data: dict[str, int] | None = None) -> None:
        info = NodeInfo(node=node, cpus=cpus, memory_mb=4096, capabilities=list(roles), data=data or {})
        await self.bus.publish(topics.NODE_INFO.format(ROOT, node=node), self.bus.envelope("NodeInfo", info.model_dump(mode="json")), retain=True)
        await self.status(node, status)

    async def status(self, node: str, status: str) -> None:
        payload = self.bus.envelope("NodeStatus", NodeStatus(node=node, status=status).model_dump(mode="json"))
        await self.bus.publish(topics.NODE_STATUS.format(ROOT, node=node), payload, retain=True)

    async def submit(self, job: str, spec: dict) -> None:
        """What the manager and the builder would append for a job whose build succeeded."""
        artifact = Artifact(key="k" * 8, python=sys.executable, code_dir="/tmp")
        for suffix, event in (("submitted", JobSubmitted(spec=spec, name=spec["name"])), ("build-started", BuildStarted()),
                              ("build-done", BuildSucceeded(artifact=artifact))):
            await append_and_publish(self.eventlog, self.bus, event.envelope(job, source="test", event_id=fact_id(job, suffix)))

    async def events(self, type_: str, job: str | None = None):
        return [e for e in await self.eventlog.read(subject=job) if e.type == type_]

    def actors(self, node: str) -> list[str]:
        state = self.desired.get(node)
        return [a.actor for a in state.actors] if state else []


@pytest.fixture
async def cluster(mqtt_broker, tmp_path):
    eventlog = open_eventlog(f"sqlite:///{tmp_path / 'events.sqlite3'}")
    async with Bus(mqtt_broker.url) as bus:
        yield Cluster(bus, eventlog)
    await eventlog.close()


def settings(mqtt_broker, tmp_path, **extra) -> NotifierSettings:
    return NotifierSettings.from_env({}, home=str(tmp_path / "home"), mqtt_url=mqtt_broker.url,
                                     eventlog_url=f"sqlite:///{tmp_path / 'events.sqlite3'}", notifier_settle=0.1, **extra)


def probe_spec(**changes) -> dict:
    spec = load_spec_file(PROBE_JOB)
    spec.update(changes)
    return spec


async def test_places_probe_job_on_three_nodes_and_publishes_desired_states(cluster, mqtt_broker, tmp_path):
    for node in ("n1", "n2", "n3"):
        await cluster.node(node)
    async with Notifier(settings(mqtt_broker, tmp_path)):
        await cluster.submit("probe-1", probe_spec())
        [placed] = await assert_eventually(lambda: cluster.events("ActorsPlaced", "probe-1"))
        assert placed.id == "probe-1:placed:1"
        event = ActorsPlaced.model_validate(placed.envelope.data)
        learners = {p.actor: p.node for p in event.actors if p.role == Role.LEARNER}
        assert set(learners) == {"probe-1-learner-0", "probe-1-learner-1", "probe-1-learner-2"}
        assert sorted(learners.values()) == ["n1", "n2", "n3"], "one learner per node"
        await assert_eventually(lambda: sum(len(cluster.actors(n)) for n in ("n1", "n2", "n3")) == 4)
        specs = {a.actor: a for n in ("n1", "n2", "n3") for a in cluster.desired[n].actors}
        aggregator = specs["probe-1-aggregator"]
        assert aggregator.module == "ember.actors.probe" and aggregator.args == ["--seconds", "2", "--exit-code", "0"]
        assert aggregator.env["EMBER_LEARNERS"] == "probe-1-learner-0,probe-1-learner-1,probe-1-learner-2"
        learner = specs["probe-1-learner-1"]
        assert learner.env["EMBER_ACTOR_ID"] == "probe-1-learner-1" and learner.env["EMBER_ROLE"] == "learner"
        assert learner.env["EMBER_NODE_ID"] == learners["probe-1-learner-1"] and learner.env["EMBER_MQTT_URL"] == mqtt_broker.url
        assert learner.artifact.python == sys.executable and learner.runtime == "process"

        # the job ends (here: cancelled): its actors disappear from every desired state
        await append_and_publish(cluster.eventlog, cluster.bus, JobCancelled().envelope("probe-1", source="test",
                                                                                            event_id=fact_id("probe-1", "terminal")))
        await assert_eventually(lambda: all(cluster.actors(n) == [] for n in ("n1", "n2", "n3")))


async def test_waits_for_capacity_then_fails_after_the_placement_timeout(cluster, mqtt_broker, tmp_path):
    await cluster.node("n1", cpus=2)
    async with Notifier(settings(mqtt_broker, tmp_path)) as notifier:
        await cluster.submit("wait-1", probe_spec())
        await assert_eventually(lambda: "wait-1" in notifier.waiting)
        assert notifier.waiting["wait-1"].startswith("needs 3 learners on learner nodes (1 cpu and 1024 MB each, process runtime): "
                                                      "1 such node online (n1), with room for 2; not satisfiable"), notifier.waiting
        assert await cluster.events("ActorsPlaced", "wait-1") == []
        await cluster.node("n2", cpus=2)  # now 4 cpus for 1 aggregator + 3 learners
        await assert_eventually(lambda: cluster.events("ActorsPlaced", "wait-1"))

    async with Notifier(settings(mqtt_broker, tmp_path, notifier_placement_timeout=2)):
        await cluster.submit("big-1", probe_spec(learners={"count": 20}))
        [failed] = await assert_eventually(lambda: cluster.events("JobFailed", "big-1"), timeout=15)
        assert failed.id == "big-1:terminal"
        reason = failed.envelope.data["reason"]
        assert reason.startswith("no capacity: needs 20 learners on learner nodes (1 cpu and 1024 MB each, process runtime): "
                                 "2 such nodes online (n1, n2), with room for 0; not satisfiable with the nodes online now"), reason


async def test_node_offline_re_places_its_actors_or_fails_the_job(cluster, mqtt_broker, tmp_path):
    for node in ("n1", "n2", "n3", "n4", "n5"):
        await cluster.node(node, cpus=1)  # one actor per node
    async with Notifier(settings(mqtt_broker, tmp_path)):
        await cluster.submit("lose-1", probe_spec())
        [placed] = await assert_eventually(lambda: cluster.events("ActorsPlaced", "lose-1"))
        first = {p.actor: p.node for p in ActorsPlaced.model_validate(placed.envelope.data).actors}
        used = set(first.values())
        [spare] = {"n1", "n2", "n3", "n4", "n5"} - used
        victim = first["lose-1-learner-1"]

        await cluster.status(victim, "offline")
        placed2 = await assert_eventually(lambda: cluster.eventlog.get("lose-1:placed:2"), message="no generation 2")
        now = {p.actor: p.node for p in ActorsPlaced.model_validate(placed2.envelope.data).actors}
        assert now["lose-1-learner-1-g2"] == spare
        assert {a: n for a, n in now.items() if a != "lose-1-learner-1-g2"} == {a: n for a, n in first.items() if a != "lose-1-learner-1"}
        await assert_eventually(lambda: cluster.actors(victim) == [] and cluster.actors(spare) == ["lose-1-learner-1-g2"])

        other = first["lose-1-learner-2"]  # no spare node left now
        await cluster.status(other, "offline")
        [failed] = await assert_eventually(lambda: cluster.events("JobFailed", "lose-1"))
        assert failed.envelope.data["reason"].startswith(f"node lost: {other}")
        await assert_eventually(lambda: all(cluster.actors(n) == [] for n in ("n1", "n2", "n3", "n4", "n5")))


async def test_data_tags_steer_learners_to_nodes_holding_the_data(cluster, mqtt_broker, tmp_path):
    await cluster.node("n1", cpus=4, data={"turbine": 100})
    await cluster.node("n2", cpus=4)
    await cluster.node("n3", cpus=4, data={"turbine": 50, "other": 1})
    async with Notifier(settings(mqtt_broker, tmp_path)):
        await cluster.submit("tags-1", probe_spec(data={"tags": ["turbine"]}))
        [placed] = await assert_eventually(lambda: cluster.events("ActorsPlaced", "tags-1"))
        event = ActorsPlaced.model_validate(placed.envelope.data)
        assert sorted(p.node for p in event.actors if p.role == Role.LEARNER) == ["n1", "n1", "n3"]
        assert [p.node for p in event.actors if p.role == Role.AGGREGATOR] == ["n2"]


async def test_malformed_payloads_on_every_subscribed_topic_are_dropped(cluster, mqtt_broker, tmp_path):
    await cluster.node("n1", cpus=8)
    async with Notifier(settings(mqtt_broker, tmp_path)) as notifier:
        junk = [b"not json", b'{"type": "x", "v": 2}', b'{"id": "1"}', b"\x00" * 1_000_000]
        wrong_data = [cluster.bus.envelope("NodeInfo", {"node": "n9"}), cluster.bus.envelope("NodeStatus", {"node": "zz", "status": "online"})]
        targets = [topics.NODE_INFO.format(ROOT, node="n9"), topics.NODE_STATUS.format(ROOT, node="n9"),
                   topics.EVENT.format(ROOT, aggregate="job", type="JobSubmitted")]
        for topic in targets:
            for payload in junk:
                await cluster.bus.publish(topic, payload)
        for envelope, topic in zip(wrong_data, targets[:2], strict=True):
            await cluster.bus.publish(topic, envelope)
        await assert_eventually(lambda: notifier.bus.stats["dropped_invalid"] >= 3 * len(junk) + 2)
        await cluster.submit("after-junk", probe_spec())
        await assert_eventually(lambda: cluster.events("ActorsPlaced", "after-junk"))
        assert "n9" not in notifier.nodes.rows or not notifier.nodes.rows["n9"].online


def start_notifier(mqtt_broker, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "EMBER_HOME": str(tmp_path / "home"), "EMBER_MQTT_URL": mqtt_broker.url,
           "EMBER_EVENTLOG_URL": f"sqlite:///{tmp_path / 'events.sqlite3'}", "EMBER_LOG_FORMAT": "json",
           "EMBER_NOTIFIER_SETTLE": "0.2"}
    log = open(tmp_path / "notifier.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ember.notifier"], env=env, stdout=log, stderr=log)


async def test_kill_9_and_restart_places_nothing_twice(cluster, mqtt_broker, tmp_path):
    for node in ("n1", "n2", "n3"):
        await cluster.node(node, cpus=4)
    proc = start_notifier(mqtt_broker, tmp_path)
    try:
        await cluster.submit("crash-1", probe_spec())
        await assert_eventually(lambda: cluster.events("ActorsPlaced", "crash-1"), timeout=20)
        await assert_eventually(lambda: sum(len(cluster.actors(n)) for n in ("n1", "n2", "n3")) == 4)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await cluster.submit("crash-2", probe_spec())  # arrives while the notifier is down
        proc = start_notifier(mqtt_broker, tmp_path)
        await assert_eventually(lambda: cluster.events("ActorsPlaced", "crash-2"), timeout=20)
        await assert_eventually(lambda: sum(len(cluster.actors(n)) for n in ("n1", "n2", "n3")) == 8)
        # a restart rebuilt its view from the log: one placement per job, no duplicate ids
        await cluster.submit("crash-3", probe_spec())
        await assert_eventually(lambda: cluster.events("ActorsPlaced", "crash-3"), timeout=20)
        placed = await cluster.events("ActorsPlaced")
        assert sorted(e.id for e in placed) == ["crash-1:placed:1", "crash-2:placed:1", "crash-3:placed:1"]
        await assert_eventually(lambda: sum(len(cluster.actors(n)) for n in ("n1", "n2", "n3")) >= 12)  # desired states arrive after the event
        actors = [a for n in ("n1", "n2", "n3") for a in cluster.actors(n)]
        assert len(actors) == len(set(actors)) == 12
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "notifier.log").read_text()[-3000:]
