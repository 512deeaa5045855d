"""Does a federated job ride out a broker restart? A digits job on the local stack, the broker
SIGKILLed after a round and started again OUTAGE seconds later; prints how the job ended.

    .venv/bin/python bench/bench_broker_outage.py [--outage 30] [--rounds 8]
    EMBER_BROKER_OUTAGE=10 .venv/bin/python bench/bench_broker_outage.py   # a shorter window

Tracking is off (the job's MLflow writes are not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ember.bus import Bus
from ember.cli.watch import follow_job
from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.jobspec import load_spec_file
from ember.stack import Stack
from ember.testing import assert_eventually

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


async def submit_and_wait_for_a_round(url: str, spec: dict[str, Any]) -> str:
    async with Bus(url, source="bench") as bus:
        job = (await bus.request("jobs.submit", {"spec": spec, "spec_dir": str(DIGITS)}, timeout=30))["job"]


        async def a_round_is_done() -> bool:
            return bool((await bus.request("jobs.get", {"job": job}, timeout=10)).get("rounds"))

        await assert_eventually(a_round_is_done, timeout=300, interval=0.2, message=f"job {job} never finished a round")
        return job


async def outcome(url: str, job: str) -> dict[str, Any]:
    async with Bus(url, source="bench") as bus:
        return await follow_job(bus, job, Console(file=io.StringIO()), timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker stays down")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_") or k == "EMBER_BROKER_OUTAGE"}
    env["EMBER_MLFLOW_TRACKING_URI"] = "none"
    with tempfile.TemporaryDirectory(prefix="ember-bench-outage-") as home, Stack(Path(home), flamelets=3, env=env) as stack:
        split = partition_digits(stack.nodes, scheme="dirichlet", alpha=0.5, seed=0)
        for node in stack.nodes:
            info = json.loads(stack.mldata_file(node).read_text())
            put_table(split.nodes[node], "digits", info["url"], info["token"])
        spec = load_spec_file(DIGITS / "job.yaml")
        spec["training"]["rounds"] = args.rounds
        job = asyncio.run(submit_and_wait_for_a_round(stack.url, spec))
        stack.kill("mosquitto")
        down = time.monotonic()
        time.sleep(args.outage)  # the outage itself is what is measured
        stack.restart("mosquitto")
        print(f"broker down for {time.monotonic() - down:.1f}s (EMBER_BROKER_OUTAGE={env.get('EMBER_BROKER_OUTAGE', 'default')})")
        summary = asyncio.run(outcome(stack.url, job))
        print(f"job {job}: {summary['state']} after {len(summary.get('rounds') or [])} rounds; {summary.get('reason', '')[:300]}")


if __name__ == "__main__":
    main()
