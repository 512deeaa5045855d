"""Control-plane benchmarks (not run by CI); results go to docs/benchmarks.md, "## Control plane".

    .venv/bin/python bench/bench_control_plane.py                 # all three
    .venv/bin/python bench/bench_control_plane.py --only submit --runs 10
    .venv/bin/python bench/bench_control_plane.py --only submit --runs 5 --runtime docker
    .venv/bin/python bench/bench_control_plane.py --only append --events 5000
    .venv/bin/python bench/bench_control_plane.py --only fanout --nodes 500 --trials 10

1. submit -> all actors running: real stack (3 flamelets, probe job), from sending `jobs.submit` to
   receiving the job's `JobRunning` event; the first (cold build) run is reported apart; goal median <= 1 s.
   `--secure`: with authentication and the ACL on (the stack's default; the others run it open).
   With `--runtime docker` the actors are containers (the stack starts a private registry);
   the cold run builds and pulls the image, the measured runs find it on the node; goal median <= 3 s.
2. manager event append + publish (`ember.follower.append_and_publish`) on SQLite with a real
   Mosquitto, until a subscriber in another process (`mosquitto_sub`) has received every event;
   goal >= 2,000 events/s.
3. desired-state fan-out: the real manager, builder and notifier; 500 simulated flamelets (retained
   info + online status, `nodes/{node}/desired` subscribed over 10 connections); a probe job with 499
   learners + 1 aggregator; latency from the ActorsPlaced event's time to each node's receipt of its
   desired state; goal p99 (and last receipt) <= 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from ember import topics
from ember.bus import NODELAY, Bus, Message
from ember.eventlog import open_eventlog
from ember.events import JobRunning, NodeInfo, NodeStatus, Role
from ember.follower import append_and_publish
from ember.security.mqtt import MqttSecurity
from ember.settings import parse_mqtt_url
from ember.stack import Stack
from ember.testing import private_broker

TERMINAL = {"JobSucceeded", "JobFailed", "JobCancelled"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class JobEvents:
    """Receipt time (time.time()) of every job event, by job and type; waiters wake on each one."""

    def __init__(self, bus: Bus) -> None:
        self.seen: dict[tuple[str, str], tuple[float, Any]] = {}
        self.changed = asyncio.Event()
        bus.subscribe(topics.EVENT, self._on, aggregate="job")

    async def _on(self, message: Message) -> None:
        env = message.envelope
        assert env is not None
        self.seen.setdefault((env.subject, env.type), (time.time(), env))
        self.changed.set()

    async def wait(self, job: str, types: set[str], timeout: float = 120) -> tuple[float, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for t in types:
                if (job, t) in self.seen:
                    return self.seen[(job, t)]
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{job}: none of {types} within {timeout}s")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


# --- 1. submit -> all actors running -------------------------------------------------------------


async def _submit_runs(url: str, runs: int, security: MqttSecurity | None = None, runtime: str = "process") -> dict[str, Any]:
    spec = {"name": "bench-probe", "learners": {"count": 3}, "probe": {"seconds": 30}, "runtime": runtime}
    async with Bus(url, security=security) as bus:
        events = JobEvents(bus)
        await asyncio.sleep(0.2)  # let the events subscription settle before the first submit
        times: list[float] = []
        for _ in range(runs + 1):
            t0 = time.time()
            reply = await bus.request("jobs.submit", {"spec": spec, "spec_dir": str(Path.cwd())}, timeout=30)
            t_running, _ = await events.wait(reply["job"], {"JobRunning", *TERMINAL}, timeout=900)
            times.append(t_running - t0)
            await bus.request("jobs.cancel", {"job": reply["job"]}, timeout=30)
            await events.wait(reply["job"], TERMINAL)
    warm = times[1:]
    return {"cold_s": round(times[0], 3), "runs": len(warm), "median_s": round(statistics.median(warm), 3),
            "p90_s": round(pct(warm, 90), 3), "min_s": round(min(warm), 3), "max_s": round(max(warm), 3)}


def bench_submit(runs: int, secure: bool = False, runtime: str = "process") -> dict[str, Any]:
    """`secure`: the stack with authentication and the ACL on, the benchmark as the local operator."""
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as home, \
            Stack(Path(home), flamelets=3, mldata=False, secure=secure, registry=runtime == "docker") as stack:
        try:
            return asyncio.run(_submit_runs(stack.url, runs, stack.security() if secure else MqttSecurity(), runtime))
        finally:
            if stack.registry_address:
                untag(stack.registry_address)


def untag(registry: str) -> None:
    """Remove the engine's tags that name `registry` (they die with it)."""
    import docker

    client = docker.from_env()
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"{registry}/"):
                client.images.remove(tag)


# --- 2. event append + publish throughput ---------------------------------------------------------


async def _append(url: str, path: Path, n: int, concurrency: int, mode: str = "both") -> float:
    """Events/s of `append_and_publish` (mode "both": each append awaited, its publish started and
    overlapped with the next appends) until the receiver has every event, or of its halves alone
    ("append"; "publish", each publish awaited until the broker's ack)."""
    host, port = parse_mqtt_url(url)
    receiver = None
    if mode != "append":  # a separate process (C client) receives them, as other services would
        if shutil.which("mosquitto_sub") is None:
            raise SystemExit("the append benchmark needs mosquitto_sub: apt-get install mosquitto-clients")
        receiver = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", host, "-p", str(port), "-q", "1", "-t", "ember/v1/events/job/#", "-C", str(n),
            stdout=asyncio.subprocess.DEVNULL,
        )
    log = open_eventlog(f"sqlite:///{path}")
    async with Bus(url) as pub:
        await asyncio.sleep(0.3)  # let the receiver subscribe
        envelopes = [JobRunning(reason="bench").envelope(f"job-{i % 50}", source="bench", event_id=f"{path.stem}-{i}") for i in range(n)]
        queue = iter(envelopes)
        t0 = time.perf_counter()

        topic = topics.EVENT.format(pub.root, aggregate="job", type="JobRunning")

        async def worker() -> None:
            for env in queue:
                if mode == "both":
                    await append_and_publish(log, pub, env)
                elif mode == "append":
                    await log.append(env)
                else:
                    await pub.publish(topic, env)

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        if receiver is not None:
            await asyncio.wait_for(receiver.wait(), 60)  # exits once it has received all n
        elapsed = time.perf_counter() - t0
    await log.close()
    return n / elapsed


def bench_append(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"events": n}
    with private_broker() as broker, tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        for concurrency in (1, 8, 32):
            rate = asyncio.run(_append(broker.url, Path(tmp) / f"c{concurrency}.sqlite3", n, concurrency))
            out[f"events_per_s_concurrency_{concurrency}"] = round(rate)
        for mode in ("append", "publish"):  # the two halves, one at a time
            rate = asyncio.run(_append(broker.url, Path(tmp) / f"{mode}.sqlite3", n, 1, mode))
            out[f"{mode}_only_per_s"] = round(rate)
    return out


# --- 3. desired-state fan-out ---------------------------------------------------------------------


async def _simulated_flamelets(url: str, names: list[str], receipts: dict[str, dict[str, float]], ready: asyncio.Event) -> None:
    """One MQTT connection standing in for `names`' flamelets: subscribes to each node's desired
    topic and records when a desired state naming a job first arrives (no envelope validation:
    the figure is the delivery, which a real flamelet does for its one node on its own core)."""
    host, port = parse_mqtt_url(url)
    client = aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5, socket_options=NODELAY, max_queued_incoming_messages=0)
    async with client:
        await client.subscribe([(topics.NODE_DESIRED.format("ember/v1", node=n), 1) for n in names])
        ready.set()
        async for message in client.messages:
            now = time.time()
            node = message.topic.value.split("/")[-2]
            for actor in json.loads(message.payload).get("data", {}).get("actors") or []:
                receipts.setdefault(actor["job"], {}).setdefault(node, now)


async def _fanout(url: str, nodes: int, trials: int, connections: int) -> dict[str, Any]:
    names = [f"sim-{i:04d}" for i in range(1, nodes + 1)]
    receipts: dict[str, dict[str, float]] = {}  # job -> node -> receipt time of a desired state naming it
    readies = [asyncio.Event() for _ in range(connections)]
    sims = [asyncio.create_task(_simulated_flamelets(url, names[c::connections], receipts, readies[c])) for c in range(connections)]
    try:
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 30)
        async with Bus(url, source="bench-sim") as bus:
            for name in names:
                info = NodeInfo(node=name, cpus=1, memory_mb=2048, capabilities=[Role.AGGREGATOR, Role.LEARNER])
                await bus.publish(topics.NODE_INFO.format(bus.root, node=name), bus.envelope("NodeInfo", info.model_dump(mode="json")), retain=True)
                status = NodeStatus(node=name, status="online")
                await bus.publish(topics.NODE_STATUS.format(bus.root, node=name), bus.envelope("NodeStatus", status.model_dump(mode="json")), retain=True)
        async with Bus(url) as bus:
            events = JobEvents(bus)
            deadline = time.monotonic() + 120
            while len([n for n in await bus.request("nodes.list", timeout=30) if n["status"] == "online"]) < nodes:
                if time.monotonic() > deadline:
                    raise TimeoutError("simulated nodes not all online")
                await asyncio.sleep(0.5)
            spec = {"name": "bench-fanout", "learners": {"count": nodes - 1}, "probe": {"seconds": 60},
                    "resources": {"cpus": 1, "memory_mb": 1024}, "runtime": "process"}
            lasts, p99s, p50s, placed_counts = [], [], [], []
            for _ in range(trials + 1):
                reply = await bus.request("jobs.submit", {"spec": spec, "spec_dir": str(Path.cwd())}, timeout=30)
                job = reply["job"]
                _, placed = await events.wait(job, {"ActorsPlaced", *TERMINAL})
                if placed.type != "ActorsPlaced":
                    raise RuntimeError(f"{job} ended before placement: {placed.data}")
                t_place = placed.time.timestamp()
                targets = {a["node"] for a in placed.data["actors"]}
                while set(receipts.get(job, {})) < targets:  # noqa: ASYNC110 (the simulated nodes' callbacks fill receipts; 10 ms is the resolution)
                    await asyncio.sleep(0.01)
                lat = [receipts[job][n] - t_place for n in targets]
                lasts.append(max(lat))
                p99s.append(pct(lat, 99))
                p50s.append(pct(lat, 50))
                placed_counts.append(len(targets))
                await bus.request("jobs.cancel", {"job": job}, timeout=30)
                await events.wait(job, TERMINAL)
                await asyncio.sleep(1.0)  # let the cleared desired states drain before the next trial
            baseline = {c: await _bus_fanout(url, names, receipts, c, trials) for c in (1, 100)}
    finally:
        for task in sims:
            task.cancel()
        await asyncio.gather(*sims, return_exceptions=True)
    ms = lambda xs: round(statistics.median(xs[1:]) * 1000, 1)  # noqa: E731 (first trial is a warm-up)
    return {"nodes": nodes, "connections": connections, "trials": trials, "nodes_placed": placed_counts[-1],
            "per_node_p50_ms": ms(p50s), "per_node_p99_ms": ms(p99s), "last_receipt_ms_median": ms(lasts),
            "last_receipt_ms_max": round(max(lasts[1:]) * 1000, 1),
            "bus_only_last_receipt_ms": {f"in_flight_{c}": v for c, v in baseline.items()}}


async def _bus_fanout(url: str, names: list[str], receipts: dict[str, dict[str, float]], in_flight: int, trials: int) -> float:
    """Baseline without the notifier: one connection publishes every node's retained desired state
    (one actor each, as the notifier would) with `in_flight` unacknowledged publishes; median over
    `trials` of the time from the first publish to the last node's receipt, in ms."""
    artifact = {"kind": "venv", "key": "0" * 64, "python": sys.executable, "code_dir": str(Path.cwd())}
    lasts = []
    async with Bus(url) as bus:
        for trial in range(trials):
            job = f"baseline-{in_flight}-{trial}"
            gate = asyncio.Semaphore(in_flight)

            async def send(i: int, name: str, job: str = job, trial: int = trial, gate: asyncio.Semaphore = gate) -> None:
                spec = {"actor": f"{job}-{i}", "job": job, "role": "learner", "module": "ember.actors.probe",
                        "args": ["--seconds", "60"], "env": {"EMBER_JOB_ID": job}, "artifact": artifact}
                env = bus.envelope("DesiredState", {"node": name, "revision": trial + 1, "actors": [spec]}, subject=name)
                async with gate:
                    await bus.publish(topics.NODE_DESIRED.format(bus.root, node=name), env, retain=True)

            t0 = time.time()
            async with asyncio.TaskGroup() as tg:
                for i, name in enumerate(names):
                    tg.create_task(send(i, name))
            while len(receipts.get(job, {})) < len(names):  # noqa: ASYNC110 (as above)
                await asyncio.sleep(0.01)
            lasts.append(max(receipts[job].values()) - t0)
    return round(statistics.median(lasts) * 1000, 1)


def bench_fanout(nodes: int, trials: int, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as home, Stack(Path(home), flamelets=0, mldata=False, secure=False) as stack:
        return asyncio.run(_fanout(stack.url, nodes, trials, connections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["submit", "append", "fanout"], action="append")
    parser.add_argument("--runs", type=int, default=10, help="submit: measured runs after one cold run")
    parser.add_argument("--secure", action="store_true", help="submit: authentication and the ACL on (ember up's default)")
    parser.add_argument("--runtime", choices=["process", "docker"], default="process", help="submit: the job's runtime")
    parser.add_argument("--events", type=int, default=5000, help="append: events per concurrency level")
    parser.add_argument("--nodes", type=int, default=500, help="fanout: simulated flamelets")
    parser.add_argument("--trials", type=int, default=10, help="fanout: placements measured after one warm-up")
    parser.add_argument("--connections", type=int, default=10, help="fanout: MQTT connections the simulated nodes share")
    args = parser.parse_args(argv)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "N pending publish calls" is expected here
    chosen = args.only or ["submit", "append", "fanout"]
    results: dict[str, Any] = {}
    if "submit" in chosen:
        results["submit_to_running"] = bench_submit(args.runs, args.secure, args.runtime)
        print(json.dumps({"submit_to_running": results["submit_to_running"]}), flush=True)
    if "append" in chosen:
        results["append_publish"] = bench_append(args.events)
        print(json.dumps({"append_publish": results["append_publish"]}), flush=True)
    if "fanout" in chosen:
        results["fanout"] = bench_fanout(args.nodes, args.trials, args.connections)
        print(json.dumps({"fanout": results["fanout"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
