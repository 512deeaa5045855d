"""`kill -9` of the manager process mid-job, then a restart: nothing duplicated, nothing missing.

While the manager is dead the job keeps going (the simulated flamelets report every actor
running, a round completes, every actor exits). The restarted manager rebuilds its projection
from the log, receives the queued and retained reports and finishes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from ember import topics
from ember.bus import Bus
from ember.errors import RequestTimeout
from ember.eventlog import open_eventlog
from ember.events import ActorState, RoundCompleted
from ember.testing import assert_eventually
from test_manager import ROOT, SPEC, report, simulate_build_and_placement, state_of

pytestmark = pytest.mark.timeout(90)


def start_manager(broker_url: str, home, log_file) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EMBER_HOME": str(home), "EMBER_MQTT_URL": broker_url, "EMBER_LOG_FORMAT": "json"}
    return subprocess.Popen([sys.executable, "-m", "ember.manager"], env=env, stdout=log_file, stderr=subprocess.STDOUT)


async def answering(client: Bus) -> bool:
    try:
        await client.request("jobs.list", {}, timeout=0.5)
        return True
    except RequestTimeout:
        return False


async def test_kill_9_mid_job_then_restart_finishes_the_job_exactly_once(mqtt_broker, ember_home, tmp_path):
    log_path = tmp_path / "manager.log"
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 (a child process's log file, opened once)
        first = start_manager(mqtt_broker.url, ember_home, log_file)
        second = None
        try:
            async with Bus(mqtt_broker.url, source="test") as client, open_eventlog(
                f"sqlite:///{ember_home / 'events.sqlite3'}"
            ) as eventlog:
                await assert_eventually(lambda: answering(client), timeout=30, message="manager never answered")
                job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
                await simulate_build_and_placement(client, eventlog, job)
                await report(client, job, "agg", ActorState.RUNNING)
                await report(client, job, "l0", ActorState.RUNNING)

                async def recorded(event_id: str):
                    return await eventlog.get(event_id)

                await assert_eventually(lambda: recorded(f"{job}:{job}-l0:running"), timeout=15)
                assert (await client.request("jobs.get", {"job": job}))["state"] == "deploying"

                first.send_signal(signal.SIGKILL)
                assert first.wait(10) == -signal.SIGKILL

                # The job goes on while the manager is dead.
                await report(client, job, "l1", ActorState.RUNNING)
                progress = RoundCompleted(round=1, metrics={"loss": 0.5})
                await client.publish(topics.JOB_PROGRESS.format(ROOT, job=job), client.envelope("RoundCompleted", progress.model_dump(mode="json")))
                for actor in ("l0", "l1", "agg"):
                    await report(client, job, actor, ActorState.EXITED, exit_code=0)

                second = start_manager(mqtt_broker.url, ember_home, log_file)
                summary = await state_of(client, job, "succeeded")
                assert [t["state"] for t in summary["transitions"]] == [
                    "submitted", "building", "placing", "deploying", "running", "succeeded"
                ]
                assert [r["round"] for r in summary["rounds"]] == [1]
                events = await eventlog.read()
                types = Counter(e.type for e in events)
                assert types["JobSubmitted"] == types["JobRunning"] == types["JobSucceeded"] == types["RoundCompleted"] == 1
                assert "JobFailed" not in types
                ids = [e.id for e in events]
                assert len(ids) == len(set(ids))
                for actor in ("agg", "l0", "l1"):
                    assert f"{job}:{job}-{actor}:exited" in ids
                assert f"{job}:{job}-l1:running" in ids  # queued in the persistent session while dead
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
    if second is not None:
        assert second.returncode == 0, log_path.read_text()[-3000:]
