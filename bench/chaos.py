"""Chaos run: digits jobs on a local stack, each with one victim killed by SIGKILL mid-job.

    .venv/bin/python -m bench.chaos [--jobs 20] [--rounds 10] [--seed 0] [--victims a,b,...] [--out DIR]

A local stack (Mosquitto, manager, builder, notifier, 3 flamelets with mldata; MLflow off:
checkpoints in the stack's home, which every node shares) runs `examples/digits` once without
faults (the reference accuracy), then `--jobs` jobs one after the other. In each, at a round
drawn from 1..rounds-2 (seeded), one victim drawn from `--victims` is killed with SIGKILL:

- `manager`, `builder`, `notifier`, `mosquitto`: killed and started again at once;
- `flamelet`: the flamelet of a node with no aggregator, started again once the job ended;
- `aggregator`: the aggregator's own process (its node stays up);
- `aggregator-node`: the aggregator node's flamelet and mldata (its actors are fenced);
- `learner`: one learner's own process.

For each job: terminal state, rounds done, recoveries, final accuracy and its distance to the
reference. Then the event log: ids unique (none duplicated), every job terminal, every succeeded job with
rounds 1..N once (none lost); gaps in `seq` are counted too (an append the log refused or rolled
back leaves one: not a lost event). Prints a Markdown table for docs/reliability.md and
writes `chaos.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ember import topics
from ember.bundle_bus import submit_job
from ember.bus import Bus, Message
from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.events import ActorReport
from ember.stack import Stack

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"
VICTIMS = ("manager", "builder", "notifier", "mosquitto", "flamelet", "aggregator", "aggregator-node", "learner")
TERMINAL = ("succeeded", "failed", "cancelled")


def digits_spec(rounds: int) -> dict[str, Any]:
    spec = yaml.safe_load((DIGITS / "job.yaml").read_text())
    spec["training"].update(rounds=rounds, checkpoint_interval=0)
    spec["resources"] = {"cpus": 0.25, "memory_mb": 256}
    spec["code"].pop("requirements", None)
    return spec


def actor_pid(shim_pid: int) -> int | None:
    """The actor's own process: the one child of its shim."""
    try:
        children = Path(f"/proc/{shim_pid}/task/{shim_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


async def view(stack: Stack, job: str) -> dict[str, Any] | None:
    """The job as the manager sees it (None while the manager or the broker is away)."""
    try:
        async with Bus(stack.url, source="chaos-view") as bus:
            return await bus.request("jobs.get", {"job": job}, timeout=5)
    except Exception:
        return None


async def until(stack: Stack, job: str, done: Any, within: float = 300) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        current = await view(stack, job)
        if current is not None and done(current):
            return current
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{job}: condition not met in {within}s")


async def one_job(stack: Stack, rounds: int, victim: str | None, at_round: int) -> dict[str, Any]:
    pids: dict[str, int] = {}

    async def on_state(message: Message) -> None:
        if message.envelope is not None:
            report = ActorReport.model_validate(message.envelope.data)
            if report.pid:
                pids[report.actor] = report.pid

    bus = Bus(stack.url, source="chaos")  # reports the actors' pids while the job runs
    bus.subscribe(topics.ACTOR_STATE, on_state)
    async with bus:
        job = (await submit_job(bus, digits_spec(rounds), DIGITS))["job"]
        return await _run(stack, job, rounds, victim, at_round, pids)


async def _run(stack: Stack, job: str, rounds: int, victim: str | None, at_round: int, pids: dict[str, int]) -> dict[str, Any]:
    record: dict[str, Any] = {"job": job, "victim": victim or "none", "at_round": at_round if victim else None}
    restart_after: list[str] = []
    if victim:
        current = await until(stack, job, lambda v: v["rounds_completed"] >= at_round or v["state"] in TERMINAL)
        aggregator = next(a for a in current["actors"] if a["role"] == "aggregator" and a["generation"] == max(x["generation"] for x in current["actors"]))
        learners = [a for a in current["actors"] if a["role"] == "learner"]
        node_of = {node: f"node-{node.split('-')[1]}" for node in {a["node"] for a in current["actors"]}}
        if victim in ("manager", "builder", "notifier", "mosquitto"):
            stack.kill(victim)
            stack.restart(victim)
        elif victim == "flamelet":
            other = sorted({a["node"] for a in learners} - {aggregator["node"]})
            name = node_of[other[0]] if other else node_of[aggregator["node"]]
            stack.kill(name)
            restart_after.append(name)
        elif victim == "aggregator-node":
            name = node_of[aggregator["node"]]
            stack.kill(name)
            stack.kill(name.replace("node-", "mldata-"))
            restart_after += [name.replace("node-", "mldata-"), name]
        else:
            actor = aggregator if victim == "aggregator" else learners[0]
            pid = actor_pid(pids.get(actor["actor"], 0))
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            else:
                record["note"] = "victim not found running"
    final = await until(stack, job, lambda v: v["state"] in TERMINAL)
    for name in restart_after:
        stack.restart(name)
    if restart_after:
        stack.wait_ready(90)
    rounds_done = final["rounds"]
    record.update(
        state=final["state"],
        rounds=len(rounds_done),
        round_numbers=[r["round"] for r in rounds_done],
        recoveries=len(final.get("recoveries") or []),
        accuracy=(rounds_done[-1]["metrics"].get("eval_accuracy") if rounds_done else None),
        reason=final["reason"].splitlines()[0] if final["reason"] else "",
    )
    return record


def check_log(home: Path, jobs: list[str], rounds: int) -> dict[str, Any]:
    db = sqlite3.connect(home / "events.sqlite3")
    rows = db.execute("SELECT seq, id, subject, type FROM events ORDER BY seq").fetchall()
    seqs = [r[0] for r in rows]
    ids = [r[1] for r in rows]
    out: dict[str, Any] = {
        "events": len(rows),
        "seq_gaps": sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1),
        "duplicate_ids": len(ids) - len(set(ids)),
        "jobs_not_terminal": [],
        "jobs_bad_rounds": [],
    }
    for job in jobs:
        types = [r[3] for r in rows if r[2] == job]
        if sum(t in ("JobSucceeded", "JobFailed", "JobCancelled") for t in types) != 1:
            out["jobs_not_terminal"].append(job)
        numbers = [json.loads(body)["data"]["round"] for (body,) in db.execute("SELECT body FROM events WHERE subject = ? AND type = 'RoundCompleted'", (job,))]
        if "JobSucceeded" in types and sorted(numbers) != list(range(1, rounds + 1)):
            out["jobs_bad_rounds"].append(job)
    return out


async def run(args: argparse.Namespace) -> int:
    out = args.out or Path(tempfile.mkdtemp(prefix="ember-chaos-"))
    home = out / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_LOG_FORMAT="json", EMBER_MLFLOW_TRACKING_URI="none", EMBER_KEEPALIVE="2")
    victims = args.victims.split(",") if args.victims else list(VICTIMS)
    rng = random.Random(args.seed)
    records: list[dict[str, Any]] = []
    with Stack(home, flamelets=3, env=env, grace=10) as stack:
        infos = {node: json.loads(stack.mldata_file(node).read_text()) for node in stack.nodes}
        split = partition_digits(sorted(infos), scheme="dirichlet", alpha=0.5, seed=0)
        for node, info in infos.items():
            put_table(split.nodes[node], "digits", info["url"], info["token"])
        reference = await one_job(stack, args.rounds, None, 0)
        print(f"reference: {reference['state']} accuracy {reference['accuracy']}", file=sys.stderr)
        for index in range(args.jobs):
            victim, at_round = rng.choice(victims), rng.randint(1, max(1, args.rounds - 2))
            record = await one_job(stack, args.rounds, victim, at_round)
            records.append(record)
            print(f"{index}: {victim} at round {at_round}: {record['state']} rounds {record['rounds']} recoveries {record['recoveries']}", file=sys.stderr)
        log = check_log(home, [reference["job"], *(r["job"] for r in records)], args.rounds)
    ref = reference["accuracy"] or 0.0
    for record in records:
        record["accuracy_delta_points"] = None if record["accuracy"] is None else round(100 * (record["accuracy"] - ref), 2)
    (out / "chaos.json").write_text(json.dumps({"reference": reference, "jobs": records, "log": log}, indent=2))
    print("| # | victim | at round | state | rounds | recoveries | accuracy | Δ vs fault-free (points) |")
    print("|---|---|---|---|---|---|---|---|")
    for index, r in enumerate(records):
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"| {index} | {r['victim']} | {r['at_round']} | {r['state']} | {r['rounds']} | {r['recoveries']} | {acc} | {r['accuracy_delta_points']} |")
    print(f"\nfault-free accuracy {ref:.3f}; event log: {log['events']} events, {log['seq_gaps']} seq gaps, "
          f"{log['duplicate_ids']} duplicate ids, jobs not terminal: {len(log['jobs_not_terminal'])}, "
          f"succeeded jobs without rounds 1..N once: {len(log['jobs_bad_rounds'])}")
    ok = (not log["duplicate_ids"] and not log["jobs_not_terminal"] and not log["jobs_bad_rounds"]
          and all(r["state"] == "succeeded" and abs(r["accuracy_delta_points"] or 0) <= 1 for r in records))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victims", default="", help="comma-separated subset of: " + ", ".join(VICTIMS))
    parser.add_argument("--out", type=Path, default=None)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
