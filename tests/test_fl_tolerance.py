"""Learner loss and too few learners, with real actor processes.

The aggregator and learners run as `python -m ember.actors.aggregator|learner` subprocesses
configured by environment, as a flamelet starts them; each learner reads its node's data from
a real mldata Flight server; a learner is killed with SIGKILL mid-job.
"""

import json
import re
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember import topics
from ember.bus import Bus, Message
from ember.mldata.server import MldataFlightServer
from ember.mldata.store import PartitionStore
from ember.testing import assert_eventually, wait_until

pytestmark = pytest.mark.timeout(120)

APP_DIR = Path(__file__).parent / "fl_app"
sys.path.insert(0, str(APP_DIR))
from tiny_model import make_table  # noqa: E402

TOKEN = "fl-test-token"


class Job:
    """One job's actor processes plus one mldata server per learner node."""

    def __init__(self, tmp: Path, broker_url: str, *, count: int, minimum: int, rounds: int, round_timeout: float, fit_seconds: float):
        self.tmp, self.url = tmp, broker_url
        self.job = f"tol-{tmp.name[-12:].replace('_', '-').strip('-')}"
        self.learners = [f"{self.job}-l{i}" for i in range(count)]
        self.spec = {
            "name": "tol",
            "code": {"entrypoint": "tiny_model:TinyModel"},
            "data": {"tags": ["tiny"]},
            "learners": {"count": count, "min": minimum},
            "training": {"rounds": rounds, "learning_rate": 0.1, "round_timeout": round_timeout},
        }
        self.fit_seconds = fit_seconds
        self.procs: dict[str, subprocess.Popen] = {}
        self.servers: list[tuple[PartitionStore, MldataFlightServer]] = []

    def env(self, actor: str, node: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
        env.update(
            EMBER_HOME=str(self.tmp / "home"),
            EMBER_MQTT_URL=self.url,
            EMBER_JOB_ID=self.job,
            EMBER_ACTOR_ID=actor,
            EMBER_NODE_ID=node,
            EMBER_JOB_SPEC=json.dumps(self.spec),
            EMBER_LEARNERS=",".join(self.learners),
            EMBER_MLFLOW_TRACKING_URI="none",
            EMBER_LOG_FORMAT="json",
            PYTHONPATH=os.pathsep.join([str(APP_DIR), env.get("PYTHONPATH", "")]),
            TINY_FIT_SECONDS=str(self.fit_seconds),
            **extra,
        )
        return env

    def start(self, actor: str, module: str, env: dict[str, str]) -> None:
        out = open(self.tmp / f"{actor}.out", "wb")
        err = open(self.tmp / f"{actor}.err", "wb")
        self.procs[actor] = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=err)

    def start_learner(self, index: int, *, data: bool = True) -> None:
        store = PartitionStore(self.tmp / f"data{index}").open()
        if data:
            store.write_table("tiny", make_table(100, seed=index))
        server = MldataFlightServer(store, location="grpc://127.0.0.1:0", token=TOKEN)
        self.servers.append((store, server))
        env = self.env(self.learners[index], f"node{index}", EMBER_MLDATA_URL=f"grpc://127.0.0.1:{server.port}", EMBER_MLDATA_TOKEN=TOKEN)
        self.start(self.learners[index], "ember.actors.learner", env)

    def start_aggregator(self) -> None:
        self.start("aggregator", "ember.actors.aggregator", self.env(f"{self.job}-agg", "node0"))

    def wait(self, actor: str, timeout: float = 60) -> int:
        return wait_until(lambda: self.procs[actor].poll() is not None, timeout=timeout, message=f"{actor} did not exit") and self.procs[actor].returncode

    def output(self, actor: str, stream: str = "err") -> list[str]:
        return (self.tmp / f"{actor}.{stream}").read_text().strip().splitlines()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for store, server in self.servers:
            server.shutdown()
            store.close()


@pytest.fixture
def make_job(tmp_path, mqtt_broker):
    jobs: list[Job] = []

    def make(**kwargs) -> Job:
        job = Job(tmp_path, mqtt_broker.url, **kwargs)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close()


async def watch_progress(url: str, job: str, seen: list) -> Bus:
    async def on_progress(message: Message) -> None:
        seen.append(message.envelope)

    bus = Bus(url)
    bus.subscribe(topics.JOB_PROGRESS, on_progress, job=job)
    await bus.start()
    return bus


async def test_learner_killed_mid_job_with_enough_left_the_job_succeeds(make_job, mqtt_broker):
    job = make_job(count=3, minimum=2, rounds=6, round_timeout=30, fit_seconds=0.3)
    seen: list = []
    bus = await watch_progress(mqtt_broker.url, job.job, seen)
    try:
        for index in range(3):
            job.start_learner(index)
        job.start_aggregator()
        await assert_eventually(lambda: any(e.type == "RoundCompleted" for e in seen), timeout=60)
        victim = job.learners[2]
        job.procs[victim].send_signal(signal.SIGKILL)
        assert job.wait("aggregator") == 0, job.output("aggregator")[-5:]
        result_lines = [line for line in job.output("aggregator", "out") if line.startswith("EMBER_RESULT ")]
        assert len(result_lines) == 1 and "eval_mse" in json.loads(result_lines[0].removeprefix("EMBER_RESULT "))["metrics"]
        for survivor in job.learners[:2]:
            assert job.wait(survivor, 20) == 0
        await assert_eventually(lambda: any(e.type == "JobResult" for e in seen))
    finally:
        await bus.shutdown()
    rounds = [e.data for e in seen if e.type == "RoundCompleted"]
    assert [r["round"] for r in rounds] == list(range(1, 7))
    assert rounds[0]["learners"] == sorted(job.learners)
    assert rounds[-1]["learners"] == sorted(job.learners[:2]) and victim not in rounds[-1]["failed"]
    assert any(victim in r["failed"] for r in rounds), "the round the learner died in lists it as failed"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
async def test_below_minimum_the_aggregator_fails_with_the_reason(make_job, mqtt_broker, sig):
    """A killed learner is reported by its Last Will; a terminated one says `gone` itself."""
    job = make_job(count=2, minimum=2, rounds=20, round_timeout=30, fit_seconds=0.3)
    seen: list = []
    bus = await watch_progress(mqtt_broker.url, job.job, seen)
    try:
        for index in range(2):
            job.start_learner(index)
        job.start_aggregator()
        await assert_eventually(lambda: any(e.type == "RoundCompleted" for e in seen), timeout=60)
        job.procs[job.learners[1]].send_signal(sig)
        assert job.wait("aggregator") == 1
        if sig == signal.SIGTERM:
            assert job.wait(job.learners[1]) == 128 + signal.SIGTERM
        last = json.loads(job.output("aggregator")[-1])
        assert last["event"] == "aggregator.failed" and last["reason"] == "only 1 learners left, minimum 2"
        assert not [line for line in job.output("aggregator", "out") if line.startswith("EMBER_RESULT")]
        assert job.wait(job.learners[0], 20) == 0  # told `done` by the failing aggregator
    finally:
        await bus.shutdown()


def test_minimum_not_reached_within_the_round_timeout(make_job):
    job = make_job(count=2, minimum=2, rounds=2, round_timeout=3, fit_seconds=0)
    job.start_learner(0)
    job.start_aggregator()
    assert job.wait("aggregator") == 1
    last = json.loads(job.output("aggregator")[-1])
    assert last["event"] == "aggregator.failed"
    assert last["reason"] == "only 1 learners ready after 3s, minimum 2"


def test_a_learner_without_data_fails_the_job_at_once_with_its_reason(make_job):
    job = make_job(count=2, minimum=2, rounds=2, round_timeout=300, fit_seconds=0)
    job.start_learner(0)
    job.start_learner(1, data=False)
    job.start_aggregator()
    assert job.wait(job.learners[1]) == 1  # NoDataError, told to the aggregator as `gone`
    assert job.wait("aggregator") == 1  # without waiting for the 300 s round timeout
    reason = json.loads(job.output("aggregator")[-1])["reason"]
    assert re.match(r"only [01] learners ready \(the others are gone\), minimum 2 \[", reason), reason
    assert f"{job.learners[1]}: NoDataError: no data for tags ['tiny']" in reason


async def test_sigterm_stops_the_aggregator_and_releases_the_learners(make_job, mqtt_broker):
    job = make_job(count=2, minimum=2, rounds=50, round_timeout=30, fit_seconds=0.3)
    seen: list = []
    bus = await watch_progress(mqtt_broker.url, job.job, seen)
    try:
        for index in range(2):
            job.start_learner(index)
        job.start_aggregator()
        await assert_eventually(lambda: any(e.type == "RoundCompleted" for e in seen), timeout=60)
        job.procs["aggregator"].send_signal(signal.SIGTERM)
        assert job.wait("aggregator", 30) == 128 + signal.SIGTERM
        assert json.loads(job.output("aggregator")[-1])["reason"] == "stopped by SIGTERM"
        for learner in job.learners:
            assert job.wait(learner, 20) == 0  # told `done` (ok false) before the aggregator left
        assert not any(e.type == "JobResult" for e in seen)
    finally:
        await bus.shutdown()
