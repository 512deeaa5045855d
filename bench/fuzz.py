"""The long fuzz run (not run by CI); figures go to docs/security.md, "Fuzzing".

    .venv/bin/python bench/fuzz.py                       # 10,000 payloads per subscribed topic
    .venv/bin/python bench/fuzz.py --payloads 500 --seed 7 --only nodes/node-1/desired

A secured local stack (`ember.stack.Stack`: authentication and the ACL on, 2 flamelets with their
mldata). For every topic the manager, builder, notifier, a flamelet and the mldata subscribe to
(`ember.security.fuzz.targets`), `--payloads` payloads from `random_payload` (random bytes, random
JSON, deep nesting, envelopes with wrong types, huge strings, odd numbers) are published as the
principal the ACL lets publish there. After each topic: every process still runs and the manager
answers. At the end: a probe job runs to success (builder, notifier, flamelets and manager all
serve) and every mldata answers. Printed: payloads and bytes sent per topic, the send rate, and the
invalid messages each process logged as dropped; `--json FILE` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ember.bus import Bus
from ember.data.client import MldataClient
from ember.security.fuzz import Target, random_payload, targets
from ember.stack import Stack
from ember.testing import assert_eventually


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payloads", type=int, default=10_000, help="payloads per subscribed topic (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=[], help="fuzz only this target (repeatable), e.g. events")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def dropped(stack: Stack) -> dict[str, int]:
    """Invalid inbound messages (and, for mldata, readings) each process logged as dropped."""
    out = {}
    for name in stack.procs:
        try:
            text = stack.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            continue
        out[name] = sum(text.count(marker) for marker in ('"bus.dropped"', '"mldata.message_dropped"', '"mldata.reading_dropped"'))
    return {name: count for name, count in out.items() if count}


async def fuzz(stack: Stack, chosen: list[Target], payloads: int, rng: random.Random) -> list[dict[str, Any]]:
    buses: dict[str, Bus] = {}

    async def bus_of(principal: str) -> Bus:
        if principal not in buses:
            name = stack.operator if principal == "operator" else principal
            buses[principal] = Bus(stack.url, source="fuzz", security=stack.security(name))
            await buses[principal].start(wait=10)
        return buses[principal]

    rows = []
    try:
        operator = await bus_of("operator")
        for target in chosen:
            bus = await bus_of(target.principal)
            sent_bytes = 0
            began = time.perf_counter()
            for i in range(payloads):
                payload = random_payload(rng, target)
                sent_bytes += len(payload)
                await bus.publish(f"{bus.root}/{target.topics[i % len(target.topics)]}", payload)  # QoS 1: acked by the broker
            seconds = time.perf_counter() - began
            nodes = await operator.request("nodes.list", {}, timeout=30)
            online = sorted(n["node"] for n in nodes if n["status"] == "online")
            rows.append({
                "target": target.name, "principal": target.principal, "services": list(target.services), "payloads": payloads,
                "mbytes": round(sent_bytes / 1e6, 1), "seconds": round(seconds, 1), "per_s": round(payloads / seconds),
                "exited": stack.exited(), "online": online,
            })  # fmt: skip
            print(f"{target.name:32} {payloads:>7} payloads {sent_bytes / 1e6:8.1f} MB {seconds:7.1f} s "
                  f"{payloads / seconds:7.0f}/s  exited={stack.exited() or '-'} online={online}", flush=True)
        spec = {"name": "after-fuzz", "learners": {"count": 2}, "probe": {"seconds": 0.2}, "runtime": "process"}
        job = (await operator.request("jobs.submit", {"spec": spec, "spec_dir": str(stack.home)}, timeout=30))["job"]

        async def ended() -> dict[str, Any] | None:
            summary = await operator.request("jobs.get", {"job": job}, timeout=30)
            return summary if summary["state"] in ("succeeded", "failed", "cancelled") else None

        summary = await assert_eventually(ended, timeout=120, interval=0.2, message=f"{job} never ended")
        rows.append({"target": "(after) probe job", "state": summary["state"], "reason": summary.get("reason", "")})
        print(f"probe job after the run: {summary['state']} ({summary.get('reason', '')})", flush=True)
    finally:
        for bus in buses.values():
            await bus.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [t for t in targets(operator="operator") if not args.only or t.name in args.only]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    with tempfile.TemporaryDirectory(prefix="ember-fuzz-") as home:
        env["EMBER_HOME"] = home
        with Stack(Path(home), flamelets=2, env=env) as stack:
            began = time.perf_counter()
            rows = asyncio.run(fuzz(stack, chosen, args.payloads, random.Random(args.seed)))
            mldata_ok = {}
            for node in stack.nodes:
                state = json.loads(stack.mldata_file(node).read_text())
                with MldataClient(state["url"], state["token"]) as client:
                    mldata_ok[node] = isinstance(client.tags(), list)
            result = {
                "payloads_per_topic": args.payloads, "seed": args.seed, "topics": rows, "mldata_answers": mldata_ok,
                "exited": stack.exited(), "dropped_logged": dropped(stack), "seconds": round(time.perf_counter() - began),
            }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "topics"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    probe = rows[-1] if rows else {}
    ok = not result["exited"] and all(mldata_ok.values()) and probe.get("state") == "succeeded"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
