"""End to end: the whole control plane as separate OS processes (ember.stack.Stack), driven by the CLI.

One Stack (private Mosquitto, manager, builder, notifier, 3 flamelets with their mldata, SQLite event
log) is shared by the module; each test submits its own job. Tests that kill a process restart it
and wait until the stack is whole again before they end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ember import topics
from ember.bus import Bus, Message
from ember.envelope import Envelope
from ember.cli.main import app
from ember.eventlog import open_eventlog
from ember.events import ActorReport
from ember.stack import Stack
from ember.testing import assert_eventually, wait_until

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "examples" / "probe" / "job.yaml"
HAPPY = ["submitted", "building", "placing", "deploying", "running", "succeeded"]
KEEPALIVE = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("ember-e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE=str(KEEPALIVE), EMBER_LOG_LEVEL="info")
    with Stack(home, flamelets=3, env=env, grace=10) as s:
        yield s


@pytest.fixture
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """`cli("job", "show", id)` runs the ember CLI in-process against the stack."""
    for key in [k for k in os.environ if k.startswith("EMBER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("EMBER_HOME", str(stack.home))
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def job_file(tmp_path: Path, name: str, probe: str, learners: str = "count: 3") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nlearners: {{{learners}}}\nprobe: {{{probe}}}\nruntime: process\n")
    return path


def submit(cli, path: Path) -> str:
    result = cli("job", "submit", str(path), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["job"]


def show(cli, job: str) -> dict[str, Any]:
    result = cli("job", "show", job, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_state(cli, job: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def reached() -> bool:
        box["job"] = show(cli, job)
        return box["job"]["state"] in states

    try:
        wait_until(reached, timeout=timeout, interval=0.2)
    except AssertionError:
        job_now = box.get("job", {})
        raise AssertionError(f"{job} never reached {states}: it is {job_now.get('state')} ({job_now.get('reason')})") from None
    return box["job"]


def states(job: dict[str, Any]) -> list[str]:
    return [t["state"] for t in job["transitions"]]


def job_events(stack: Stack, job: str) -> list[str]:
    async def read() -> list[str]:
        log = open_eventlog(f"sqlite:///{stack.home / 'events.sqlite3'}")
        try:
            return [e.type for e in await log.read(subject=job)]
        finally:
            await log.close()

    return asyncio.run(read())


def actor_reports(stack: Stack, job: str, *, count: int) -> dict[str, ActorReport]:
    """The retained actor states of `job` (waits until `count` actors report running)."""

    async def collect() -> dict[str, ActorReport]:
        seen: dict[str, ActorReport] = {}
        enough = asyncio.Event()

        async def on_state(message: Message) -> None:
            report = ActorReport.model_validate(message.envelope.data)
            if report.job == job:
                seen[report.actor] = report
                if sum(r.state == "running" and r.pid is not None for r in seen.values()) >= count:
                    enough.set()

        bus = Bus(stack.url, security=stack.security())
        bus.subscribe(topics.ACTOR_STATE, on_state)
        async with bus:
            await asyncio.wait_for(enough.wait(), 30)
        return seen

    return asyncio.run(collect())


def group_alive(pgid: int) -> list[int]:
    """Running processes of the process group `pgid` (an actor's shim leads its actor's group)."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie has stopped running
            alive.append(int(stat_file.parent.name))
    return alive


def exact_once(events: list[str], *types: str) -> None:
    counts = Counter(events)
    for t in types:
        assert counts[t] == 1, f"{t} appears {counts[t]} times in {events}"


# --- the happy path -----------------------------------------------------------------------------


def test_probe_job_goes_through_every_state_and_show_prints_them(stack: Stack, cli) -> None:
    result = cli("job", "submit", str(PROBE), "--wait", "--wait-timeout", "60")
    assert result.exit_code == 0, result.output
    job_id = re.search(r"submitted (probe-[0-9a-f]{8})", result.stdout).group(1)
    job = show(cli, job_id)
    assert states(job) == HAPPY
    # the job ends with its aggregator (exit 0); the learners' last reports follow within moments
    # (a learner still finishing when the job ends is stopped by its flamelet: exited or failed)
    def settled() -> dict[str, str]:
        actors = {a["role"] + ":" + a["actor"]: a["state"] for a in show(cli, job_id)["actors"]}
        return actors if all(s in ("exited", "failed") for s in actors.values()) else {}

    actors = wait_until(settled, timeout=10, interval=0.2, message="actors still running after the job ended")
    assert len(actors) == 4 and [s for k, s in actors.items() if k.startswith("aggregator:")] == ["exited"]
    events = job_events(stack, job_id)
    exact_once(events, "JobSubmitted", "BuildStarted", "BuildSucceeded", "ActorsPlaced", "JobRunning", "JobSucceeded")
    text = cli("job", "show", job_id).stdout
    for state in HAPPY:
        assert re.search(rf"\d\d:\d\d:\d\d\.\d{{3}}\s+\+\d+\.\d{{3}}s\s+{state}\b", text), text
    listing = cli("job", "list", "--json")
    assert job_id in {j["job"] for j in json.loads(listing.stdout)}


def test_invalid_spec_names_every_bad_field_and_writes_nothing(stack: Stack, cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad_Name\nlearners: {count: 0}\ntraining: {rounds: -1}\nprobe: {seconds: 1}\n")
    result = cli("job", "submit", str(bad))
    assert result.exit_code == 2
    for field in ("name", "learners.count", "training.rounds"):
        assert field in result.stderr, result.stderr
    assert all(j["name"] != "Bad_Name" for j in json.loads(cli("job", "list", "--json").stdout))


def test_failing_actor_fails_the_job_with_its_log_tail(stack: Stack, cli, tmp_path: Path) -> None:
    path = job_file(tmp_path, "probe-fail", "seconds: 0.5, exit_code: 3, failing_learner: 1, aggregator_seconds: 30")
    result = cli("job", "submit", str(path), "--wait", "--wait-timeout", "60")
    assert result.exit_code == 10, result.output
    job_id = re.search(r"submitted (probe-fail-[0-9a-f]{8})", result.stdout).group(1)
    job = show(cli, job_id)
    assert job["state"] == "failed"
    assert "exit code 3" in job["reason"]
    assert "probe:" in job["reason"], job["reason"]  # the actor's own output, from its log tail
    assert job_events(stack, job_id).count("JobFailed") == 1


def test_cancel_stops_every_actor_process_within_5s(stack: Stack, cli, tmp_path: Path) -> None:
    job_id = submit(cli, job_file(tmp_path, "probe-long", "seconds: 120"))
    wait_state(cli, job_id, "running")
    groups = [r.pid for r in actor_reports(stack, job_id, count=4).values() if r.state == "running"]
    assert len(groups) == 4
    # the shim and its actor (the shim starts the actor just after the flamelet reported it running)
    wait_until(lambda: all(len(group_alive(g)) >= 2 for g in groups), timeout=10, message=f"actors never started: {groups}")
    result = cli("job", "cancel", job_id)
    assert result.exit_code == 0, result.output
    wait_until(lambda: not any(group_alive(g) for g in groups), timeout=5, message=f"actor processes still alive: {groups}")
    assert show(cli, job_id)["state"] == "cancelled"
    assert cli("job", "cancel", job_id).exit_code == 4  # already ended: conflict


# --- crashes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "when"), [("manager", "running"), ("notifier", "placing"), ("notifier", "running")])
def test_kill_9_of_a_service_mid_job_then_restart_still_succeeds(stack: Stack, cli, tmp_path: Path, service: str, when: str) -> None:
    name = f"probe-{service}-{when}"
    if when == "placing":  # dead before placing: the job waits in `placing` until the restart
        stack.kill(service)
        job_id = submit(cli, job_file(tmp_path, name, "seconds: 1"))
        wait_state(cli, job_id, "placing")
    else:  # dead while the actors run: reports queue in its persistent session, the log has the rest
        job_id = submit(cli, job_file(tmp_path, name, "seconds: 3"))
        wait_state(cli, job_id, "running")
        stack.kill(service)
    stack.restart(service)
    job = wait_state(cli, job_id, "succeeded", "failed", "cancelled", timeout=60)
    assert states(job) == HAPPY, job
    events = job_events(stack, job_id)
    exact_once(events, "JobSubmitted", "BuildStarted", "BuildSucceeded", "ActorsPlaced", "JobRunning", "JobSucceeded")
    assert all(n == 1 for (t, n) in Counter(events).items() if t != "ActorStateChanged")
    assert Counter(events)["ActorStateChanged"] <= 4 * 3  # at most running, exited (+ starting) per actor: nothing twice


def test_flamelet_sigkill_is_seen_offline_and_its_actors_are_replaced(stack: Stack, cli, tmp_path: Path) -> None:
    job_id = submit(cli, job_file(tmp_path, "probe-node", "seconds: 120", learners="count: 3, min: 3"))
    job = wait_state(cli, job_id, "running")
    victim = next(a["node"] for a in job["actors"] if a["role"] == "learner")
    lost = {a["actor"] for a in job["actors"] if a["node"] == victim}
    process = f"node-{victim.split('-')[1]}"
    stack.kill(process)
    try:

        def offline() -> bool:
            nodes = json.loads(cli("node", "list", "--json").stdout)
            return any(n["node"] == victim and n["status"] == "offline" for n in nodes)

        wait_until(offline, timeout=KEEPALIVE * 1.5 + 5, interval=0.2, message=f"{victim} never seen offline by `ember node list`")

        def handled() -> dict[str, Any] | None:
            j = show(cli, job_id)
            # re-placed: deployed again, or (the aggregator was on the lost node) recovering
            replaced = states(j).count("deploying") > 1 or (
                "recovering" in states(j) and max(a["generation"] for a in j["actors"]) > 1 and j["state"] == "running"
            )
            return j if replaced or j["state"] == "failed" else None

        job = wait_until(handled, timeout=30, interval=0.2, message="actors of the lost node neither re-placed nor the job failed")
        if job["state"] == "failed":
            assert f"node lost: {victim}" in job["reason"]
        else:
            generation = max(a["generation"] for a in job["actors"])
            current = [a for a in job["actors"] if a["generation"] == generation]
            assert victim not in {a["node"] for a in current} and not lost & {a["actor"] for a in current}
            assert len(current) == 4
    finally:
        cli("job", "cancel", job_id)  # frees the nodes for the next tests, whatever happened
        stack.restart(process)
        stack.wait_ready(60)


# --- malformed input -----------------------------------------------------------------------------


JUNK = [b"not json", b'{"id": "x", "type": "T", "v": 2, "data": {}}', b'{"id": "x"}', b"\x7f" * 1_000_000]
MISSING_FIELDS = b'{"id": "y", "type": "Anything", "data": {"unexpected": 1}, "v": 1}'
POISON_NODE = "n" * 201
"""A node id too long for any envelope built from it: its (retained) status must not crash anyone."""


def test_malformed_payloads_on_every_subscribed_topic_are_dropped_and_counted(stack: Stack, cli, tmp_path: Path) -> None:
    # topic -> (the principal the ACL lets publish there, processes subscribed to it, text their drop log line carries)
    operator = stack.operator
    targets = {
        **{f"req/{a}": (operator, ["manager"], f"req/{a}") for a in ("jobs.submit", "jobs.cancel", "jobs.get", "jobs.list", "nodes.list")},
        "events/job/JobSubmitted": ("manager", ["manager", "builder", "notifier"], "events/job/JobSubmitted"),
        "nodes/node-3/info": ("node-3", ["manager", "notifier"], "nodes/node-3/info"),
        "nodes/node-3/status": ("node-3", ["manager", "notifier"], "nodes/node-3/status"),
        "nodes/node-3/actors/a1/state": ("node-3", ["manager"], "nodes/node-3/actors/a1/state"),
        "jobs/j1/progress": ("node-3", ["manager"], "jobs/j1/progress"),
        "nodes/node-1/desired": ("notifier", ["node-1"], "nodes/node-1/desired"),
        "data/junk": ("devices-node-1", ["mldata-1", "mldata-2", "mldata-3"], '"tag": "junk"'),
    }
    # A status under a 201-character node name: no identity may publish it (the ACL pins each
    # node's name), so it is sent as the node-3 it would claim to be and must never arrive.
    poison = f"ember/v1/nodes/{POISON_NODE}/status"

    async def flood() -> None:
        for topic, (principal, _, _) in targets.items():
            async with Bus(stack.url, security=stack.security(principal)) as bus:
                for payload in [*JUNK, MISSING_FIELDS]:
                    await bus.publish(f"ember/v1/{topic}", payload)
        async with Bus(stack.url, security=stack.security("node-3")) as bus:
            status = bus.envelope("NodeStatus", {"node": POISON_NODE, "status": "online"})
            await bus.publish(poison, status, retain=True)

    async def clear_poison() -> None:
        async with Bus(stack.url, security=stack.security("node-3")) as bus:
            await bus.publish(poison, b"", retain=True)

    asyncio.run(flood())

    def drop_logged(process: str, marker: str) -> bool:
        lines = stack.log_path(process).read_text(errors="replace").splitlines()
        return any("dropped" in line and marker in line for line in lines)

    for topic, (_, processes, marker) in targets.items():
        for process in processes:
            wait_until(lambda p=process, m=marker: drop_logged(p, m), timeout=10, message=f"{process} logged no drop for {topic}")
    assert stack.exited() == {}  # nobody died ...
    try:
        stack.restart("manager")  # a clean stop logs the manager's counters
        stack.restart("notifier")  # a retained message would be delivered again at start
        stopped = [json.loads(line) for line in stack.log_path("manager").read_text().splitlines() if '"manager.stopped"' in line]
        assert stopped and stopped[-1].get("dropped_invalid", 0) >= 5 * 5, stopped[-1:]
        stack.wait_ready(60)
    finally:
        asyncio.run(clear_poison())
    result = cli("job", "submit", str(job_file(tmp_path, "probe-after-junk", "seconds: 0.2")), "--wait", "--wait-timeout", "60")
    assert result.exit_code == 0, result.output  # ... and everyone still serves
    job_id = re.search(r"(probe-after-junk-[0-9a-f]{8})", result.stdout).group(1)
    logs = cli("job", "logs", job_id)
    assert logs.exit_code == 0 and "probe:" in logs.stdout, logs.output
    for process in ("manager", "notifier"):  # the broker refused the poison status: nobody ever saw it
        assert "(201 chars)" not in stack.log_path(process).read_text(errors="replace")


# --- data on the nodes ---------------------------------------------------------------------------


def test_data_push_ls_drop_and_mock_devices_reach_the_nodes_mldata(stack: Stack, cli, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "readings.parquet"
    pq.write_table(pa.table({"ts": list(range(100)), "value": [float(i) for i in range(100)]}), path)
    assert cli("data", "push", str(path), "--tag", "cli-push").exit_code == 2  # 3 nodes: which one?
    result = cli("data", "push", str(path), "--tag", "cli-push", "--node", "node-3")
    assert result.exit_code == 0, result.output
    mock = cli("devices", "mock", "--node", "node-2", "--transport", "flight", "--rate", "0", "--duration", "2",
               "--devices", "2", "--tag", "cli-mock")
    assert mock.exit_code == 0, mock.output

    def tags() -> dict[tuple[str, str], int]:
        rows = json.loads(cli("data", "ls", "--json").stdout)
        return {(r["node"], r["tag"]): r["rows"] for r in rows}

    found = tags()
    assert found[("node-3", "cli-push")] == 100 and ("node-2", "cli-mock") in found
    assert ("node-1", "cli-push") not in found  # data stays on the node it was sent to

    def announced() -> bool:  # the flamelet puts the node's data tags into its node info
        nodes = {n["node"]: n for n in json.loads(cli("node", "list", "--json").stdout)}
        return nodes["node-3"]["info"]["data"].get("cli-push") == 100

    wait_until(announced, timeout=15, interval=0.3, message="node-3 never announced its data tag")
    # over MQTT the mock publishes as node-1's device fleet (the ACL refuses readings from the operator)
    mqtt = cli("devices", "mock", "--node", "node-1", "--transport", "mqtt", "--rate", "0", "--duration", "1",
               "--devices", "1", "--tag", "cli-mqtt")
    assert mqtt.exit_code == 0, mqtt.output
    wait_until(lambda: ("node-1", "cli-mqtt") in tags(), timeout=30, interval=0.3, message="node-1's mldata never stored the MQTT readings")
    assert cli("data", "drop", "--tag", "cli-push", "--node", "node-3").exit_code == 0
    assert ("node-3", "cli-push") not in tags()


# --- the live view -------------------------------------------------------------------------------


def test_watch_shows_actors_and_a_progress_bar_over_rounds(stack: Stack, cli, tmp_path: Path) -> None:
    """Rounds arrive as the aggregator would report them (`jobs/{job}/progress`); watch renders them live."""
    import io

    from rich.console import Console

    from ember.cli.watch import follow_job
    from ember.events import RoundCompleted

    path = tmp_path / "rounds.yaml"
    path.write_text("name: probe-rounds\nlearners: {count: 3}\ntraining: {rounds: 3}\nprobe: {seconds: 120}\n")
    job_id = submit(cli, path)
    wait_state(cli, job_id, "running")
    screen = io.StringIO()

    async def scenario() -> dict[str, Any]:
        # rounds come from the job's aggregator: the ACL lets node identities write job progress
        # (`actors_as_node`), the test's operator may not
        async with Bus(stack.url, security=stack.security()) as bus, Bus(stack.url, security=stack.security("node-1")) as node:
            console = Console(file=screen, force_terminal=True, width=140, color_system=None)
            watching = asyncio.create_task(follow_job(bus, job_id, console, refresh=0.2))
            for n in (1, 2):
                event = RoundCompleted(round=n, metrics={"loss": 1.0 / n, "accuracy": 0.4 * n}, duration_s=0.5)
                # as the job's aggregator sends it: the manager records progress only from the aggregator
                envelope = Envelope(type="RoundCompleted", source=f"{job_id}-aggregator", subject=job_id, data=event.model_dump(mode="json"))
                await node.publish(topics.JOB_PROGRESS.format(bus.root, job=job_id), envelope)
            async def two_rounds() -> bool:
                return len((await bus.request("jobs.get", {"job": job_id}))["rounds"]) >= 2

            await assert_eventually(two_rounds, timeout=30, interval=0.1, message="the manager never recorded 2 rounds")
            await assert_eventually(lambda: "2/3" in screen.getvalue(), timeout=30, interval=0.1, message="watch never showed 2/3")
            await bus.request("jobs.cancel", {"job": job_id})
            return await asyncio.wait_for(watching, 30)

    final = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert final["state"] == "cancelled" and [r["round"] for r in final["rounds"]] == [1, 2]
    text = screen.getvalue()
    assert "accuracy=0.8" in text and "learner" in text and "cancelled" in text
    shown = cli("job", "show", job_id).stdout
    assert "Rounds" in shown and "2/3" in shown


def test_logs_follow_prints_actor_output_until_the_job_ends(stack: Stack, cli, tmp_path: Path) -> None:
    job_id = submit(cli, job_file(tmp_path, "probe-logs", "seconds: 2"))
    wait_state(cli, job_id, "running")
    result = cli("job", "logs", job_id, "--follow", "--actor", f"{job_id}-aggregator")
    assert result.exit_code == 0, result.output
    assert "probe: done after" in result.stdout and "learner" not in result.stdout
    assert show(cli, job_id)["state"] == "succeeded"
