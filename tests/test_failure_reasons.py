"""Failure reasons are recorded as one plain line of bounded length (real Mosquitto, real SQLite).

A flamelet reports a failed learner whose reason is 10 KB of coloured, multi-line output; the
manager records the actor's reason and the job's `JobFailed` reason without escape codes or line
breaks, cut to `MAX_REASON` characters; the log tail keeps its lines, without escape codes.
"""

from __future__ import annotations

import pytest

from ember import topics
from ember.bus import Bus
from ember.eventlog import open_eventlog
from ember.events import ActorReport, ActorsPlaced, ActorState, Artifact, BuildStarted, BuildSucceeded, Placement, Role
from ember.follower import append_and_publish
from ember.manager.app import ManagerService
from ember.manager.settings import ManagerSettings
from ember.reasons import MAX_REASON, one_line
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)

ROOT = "ember/v1"
SPEC = {"name": "probe", "probe": {"seconds": 1}, "learners": {"count": 2, "min": 2}}
ACTORS = [("agg", Role.AGGREGATOR, "n1", 0), ("l0", Role.LEARNER, "n1", 0), ("l1", Role.LEARNER, "n2", 1)]
RED, RESET = "\x1b[31;1m", "\x1b[0m"


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


async def report(client: Bus, job: str, actor: str, state: ActorState, **fields: object) -> None:
    name, role, node, _ = next(a for a in ACTORS if a[0] == actor)
    data = ActorReport(actor=f"{job}-{name}", job=job, node=node, role=role, state=state, **fields)
    topic = topics.ACTOR_STATE.format(ROOT, node=node, actor=f"{job}-{name}")
    await client.publish(topic, client.envelope("ActorReport", data.model_dump(mode="json")), retain=True)


def assert_plain_line(text: str) -> None:
    assert "\x1b" not in text and "\n" not in text and "\r" not in text, text[:200]
    assert 0 < len(text) <= MAX_REASON, len(text)


def test_one_line_drops_escapes_joins_lines_and_bounds_length() -> None:
    assert one_line(f"{RED}error{RESET}:\n  bad   value\r\n\n\x1b]0;title\x07done") == "error: | bad value | done"
    cut = one_line("x" * 10_000)
    assert len(cut) == MAX_REASON and cut.endswith("…")


async def test_a_coloured_10kb_reason_is_recorded_as_one_plain_bounded_line(manager, client, eventlog):
    job = (await client.request("jobs.submit", {"spec": SPEC}))["job"]
    artifact = Artifact(key="k", python="/usr/bin/python3", code_dir="/tmp")
    placements = [Placement(actor=f"{job}-{a}", role=r, node=n, index=i) for a, r, n, i in ACTORS]
    for event_id, event in (("build-started", BuildStarted()), ("build-done", BuildSucceeded(artifact=artifact, duration_s=0.1)),
                            ("placed:1", ActorsPlaced(generation=1, actors=placements))):
        await append_and_publish(eventlog, client, event.envelope(job, source="test", event_id=f"{job}:{event_id}"))
    for actor in ("agg", "l0", "l1"):
        await report(client, job, actor, ActorState.RUNNING)

    noise = "\n".join(f"{RED}Traceback line {i}{RESET}: " + "y" * 60 for i in range(150))
    assert len(noise) > 10_000
    tail = f"loading data\n{RED}ValueError{RESET}: sensor table is empty"
    await report(client, job, "l1", ActorState.FAILED, exit_code=3, reason=f"exited with code 3\n{noise}", log_tail=tail)

    async def failed() -> dict | None:
        summary = await client.request("jobs.get", {"job": job})
        return summary if summary["state"] == "failed" else None

    summary = await assert_eventually(failed, timeout=15, interval=0.05, message="the job never failed")
    assert_plain_line(summary["reason"])
    assert summary["reason"].startswith(f"learner {job}-l1 on n2 failed with exit code 3 (exited with code 3 | Traceback line 0:")
    assert "…): 1 learners left, minimum 2; last output: ValueError: sensor table is empty" in summary["reason"]
    changed = [e.envelope.data for e in await eventlog.read() if e.type == "ActorStateChanged" and e.envelope.data["state"] == "failed"]
    [recorded] = changed
    assert_plain_line(recorded["reason"])
    assert recorded["log_tail"] == "loading data\nValueError: sensor table is empty"
