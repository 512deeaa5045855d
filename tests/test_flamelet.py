"""Flamelet against a real Mosquitto, running real probe actors through the process runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember import topics
from ember.bus import Bus, Message
from ember.events import ActorReport, ActorSpec, ActorState, Artifact, DesiredState, NodeInfo, Role
from ember.flamelet.app import Flamelet
from ember.flamelet.settings import FlameletSettings
from ember.nodes import NodeTable, parse_status, supersedes
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)
ROOT = "ember/v1"


def probe(actor: str, seconds: float, code: int = 0, *, role: Role = Role.LEARNER) -> ActorSpec:
    return ActorSpec(actor=actor, job="job1", role=role, module="ember.actors.probe",
                     args=["--seconds", str(seconds), "--exit-code", str(code)],
                     env={"EMBER_JOB_ID": "job1", "EMBER_ACTOR_ID": actor}, artifact=Artifact(key="k", python=sys.executable))


def pid_alive(pid: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, TypeError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and not stat.read_text().split(") ")[-1].startswith("Z")


class Observer:
    """What a user (or the manager) sees on the bus for one node."""

    def __init__(self, bus: Bus, node: str) -> None:
        self.bus, self.node = bus, node
        self.reports: dict[str, list[ActorReport]] = {}
        self.logs: dict[str, list[str]] = {}
        self.status: list[str] = []
        self.info: list[NodeInfo] = []
        self.table = NodeTable()  # as the manager and the notifier see the node
        self.stale: list[str] = []
        """Statuses the table's ordering rule ignored."""
        bus.subscribe(topics.ACTOR_STATE, self._on_report, node=node)
        bus.subscribe(topics.ACTOR_LOG, self._on_log, node=node)
        bus.subscribe(topics.NODE_STATUS, self._on_status, node=node)
        bus.subscribe(topics.NODE_INFO, self._on_info, node=node)

    async def _on_report(self, m: Message) -> None:
        report = ActorReport.model_validate(m.envelope.data)
        self.reports.setdefault(report.actor, []).append(report)

    async def _on_log(self, m: Message) -> None:
        self.logs.setdefault(m.params["actor"], []).extend(m.envelope.data["lines"])

    async def _on_status(self, m: Message) -> None:
        status = parse_status(m.envelope, m.params)
        if not supersedes(status, self.table.row(status.node).status):
            self.stale.append(f"{status.status} since {status.since}")
        self.table.update_status(status)
        self.status.append(status.status)

    async def _on_info(self, m: Message) -> None:
        self.info.append(NodeInfo.model_validate(m.envelope.data))
        self.table.update_info(self.info[-1])

    def states(self, actor: str) -> list[str]:
        return [r.state.value for r in self.reports.get(actor, [])]

    def last(self, actor: str) -> ActorReport | None:
        return self.reports[actor][-1] if self.reports.get(actor) else None

    def ended(self, actor: str) -> ActorReport | None:
        last = self.last(actor)
        return last if last is not None and last.state.terminal else None

    async def desire(self, revision: int, *actors: ActorSpec) -> None:
        state = DesiredState(node=self.node, revision=revision, actors=list(actors))
        envelope = self.bus.envelope("DesiredState", state.model_dump(mode="json"))
        await self.bus.publish(topics.NODE_DESIRED.format(ROOT, node=self.node), envelope, retain=True)


def flamelet_settings(mqtt_broker, home: Path, node: str = "n1", **extra) -> FlameletSettings:
    return FlameletSettings.from_env({}, home=str(home), mqtt_url=mqtt_broker.url, node_id=node, **extra)


@pytest.fixture
async def observer(mqtt_broker):
    async with Bus(mqtt_broker.url) as bus:
        yield Observer(bus, "n1")


async def test_runs_desired_actors_and_reports_exit_codes_and_log_tail(observer, mqtt_broker, tmp_path):
    data_dir = tmp_path / "mldata"
    data_dir.mkdir()
    (data_dir / "_summary.json").write_text('{"v": 1, "tags": {"turbine": {"rows": 120, "partitions": 1}}}')
    async with Flamelet(flamelet_settings(mqtt_broker, tmp_path, mldata_data_dir=str(data_dir), flamelet_cpus=3)):
        await assert_eventually(lambda: observer.status and observer.status[-1] == "online" and observer.info)
        assert observer.info[-1].data == {"turbine": 120} and observer.info[-1].cpus == 3
        await observer.desire(1, probe("ok", 0.2, 0), probe("bad", 0.2, 3))
        ok = await assert_eventually(lambda: observer.ended("ok"))
        bad = await assert_eventually(lambda: observer.ended("bad"))
        assert observer.states("ok")[:2] == ["starting", "running"]
        assert ok.state == ActorState.EXITED and ok.exit_code == 0
        assert bad.state == ActorState.FAILED and bad.exit_code == 3
        assert "exiting with code 3" in bad.log_tail and "exited with code 3" in bad.reason
        await assert_eventually(lambda: any("probe: done" in line for line in observer.logs.get("ok", [])))
        log_file = tmp_path / "nodes" / "n1" / "actors" / "bad.log"
        assert "probe: started" in log_file.read_text()
        # a stale revision is ignored: nothing new starts
        await observer.desire(0, probe("stale", 0.1))
        await observer.desire(2, probe("ok", 0.2), probe("bad", 0.2, 3), probe("fresh", 0.1))
        await assert_eventually(lambda: observer.ended("fresh"))
        assert "stale" not in observer.reports and observer.states("ok").count("running") <= 2


async def test_actor_no_longer_desired_is_stopped_within_5s(observer, mqtt_broker, tmp_path):
    async with Flamelet(flamelet_settings(mqtt_broker, tmp_path)):
        await observer.desire(1, probe("long", 600), probe("stubborn", 600))
        await assert_eventually(lambda: observer.states("long")[-1:] == ["running"] and observer.states("stubborn")[-1:] == ["running"])
        # the probe has installed its SIGTERM handler once it logged its first line
        await assert_eventually(lambda: any("probe: started" in line for line in observer.logs.get("long", [])))
        pids = [observer.last("long").pid, observer.last("stubborn").pid]
        assert all(pid_alive(pid) for pid in pids)
        os.kill(observer.last("stubborn").pid, signal.SIGSTOP)  # a process that does not react to SIGTERM
        await observer.desire(2)
        await assert_eventually(lambda: not any(pid_alive(pid) for pid in pids), timeout=5)
        long = await assert_eventually(lambda: observer.ended("long"))
        stubborn = await assert_eventually(lambda: observer.ended("stubborn"))
        assert long.exit_code == 143 and "no longer desired" in long.reason
        assert "SIGKILL" in stubborn.reason


async def test_clean_shutdown_stops_actors_and_announces_offline(observer, mqtt_broker, tmp_path):
    async with Flamelet(flamelet_settings(mqtt_broker, tmp_path)):
        await observer.desire(1, probe("worker", 600), probe("docker-one", 1).model_copy(update={"runtime": "docker"}))
        await assert_eventually(lambda: any("probe: started" in line for line in observer.logs.get("worker", [])))
        pid = observer.last("worker").pid
        refused = await assert_eventually(lambda: observer.ended("docker-one"))
        assert "'docker'" in refused.reason
    ended = await assert_eventually(lambda: observer.ended("worker"))
    assert not pid_alive(pid) and "flamelet shut down" in ended.reason
    await assert_eventually(lambda: observer.status[-1:] == ["offline"])


async def test_malformed_desired_states_are_dropped_and_the_flamelet_keeps_serving(observer, mqtt_broker, tmp_path):
    async with Flamelet(flamelet_settings(mqtt_broker, tmp_path)) as flamelet:
        topic = topics.NODE_DESIRED.format(ROOT, node="n1")
        for junk in (b"not json", b'{"type": "x", "v": 2}', b'{"id": "1"}', b"\x00" * 1_000_000):
            await observer.bus.publish(topic, junk)
        await observer.bus.publish(topic, observer.bus.envelope("DesiredState", {"node": "n1"}))
        await observer.bus.publish(topic, observer.bus.envelope("DesiredState", {"node": "other", "revision": 5, "actors": []}))
        await assert_eventually(lambda: flamelet.bus.stats["dropped_invalid"] == 6)
        await observer.desire(1, probe("after", 0.1))
        await assert_eventually(lambda: observer.ended("after"))


async def test_survives_a_broker_restart(observer, mqtt_broker, tmp_path):
    async with Flamelet(flamelet_settings(mqtt_broker, tmp_path)) as flamelet:
        await assert_eventually(lambda: observer.status[-1:] == ["online"])
        mqtt_broker.restart()
        await assert_eventually(lambda: not flamelet.bus.connected, timeout=10)
        await assert_eventually(lambda: flamelet.bus.connected and observer.bus.connected, timeout=15)
        await observer.desire(1, probe("after-restart", 0.1))
        await assert_eventually(lambda: observer.ended("after-restart"), timeout=15)
        assert observer.table.row("n1").online and observer.stale == [], "the reconnect's statuses are newer than the last"


def start_flamelet(mqtt_broker, home: Path, keepalive: int) -> subprocess.Popen:
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_MQTT_URL": mqtt_broker.url, "EMBER_LOG_FORMAT": "json"}
    log = open(home / "flamelet.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ember.flamelet", "--node", "n1", "--keepalive", str(keepalive)],
                            env=env, stdout=log, stderr=log)


async def test_sigkill_flips_status_offline_and_a_restart_re_adopts_running_actors(observer, mqtt_broker, tmp_path):
    keepalive = 2
    proc = start_flamelet(mqtt_broker, tmp_path, keepalive)
    try:
        await assert_eventually(lambda: observer.status[-1:] == ["online"], timeout=20)
        await observer.desire(1, probe("survivor", 600))
        await assert_eventually(lambda: observer.states("survivor")[-1:] == ["running"])
        await assert_eventually(lambda: any("probe: started" in line for line in observer.logs.get("survivor", [])))
        pid = observer.last("survivor").pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the broker notices within 1.5 x keepalive and publishes the Last Will
        await assert_eventually(lambda: observer.status[-1:] == ["offline"], timeout=1.5 * keepalive + 2)
        assert observer.table.row("n1").offline, "the will of the connection takes the node offline"
        assert pid_alive(pid), "the actor outlives its flamelet"

        proc = start_flamelet(mqtt_broker, tmp_path, keepalive)
        await assert_eventually(lambda: observer.status[-1:] == ["online"], timeout=20)
        assert observer.table.row("n1").online, "the restarted flamelet's status is newer than the will"
        await assert_eventually(lambda: observer.last("survivor").state == ActorState.RUNNING and observer.last("survivor").pid == pid)
        assert observer.states("survivor").count("starting") == 1, "re-adopted, not started again"
        await observer.desire(2)  # the adopted actor is stopped and its exit code read from the shim's record
        ended = await assert_eventually(lambda: observer.ended("survivor"), timeout=5)
        assert ended.exit_code == 143 and not pid_alive(pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "flamelet.log").read_text()[-3000:]
    await assert_eventually(lambda: observer.status[-1:] == ["offline"]), "a clean shutdown announces offline itself"
    assert observer.table.row("n1").offline and observer.stale == [], "every status the flamelet published is newer than the last"
