"""Per-round cost of checkpoints: the digits job with `training.checkpoints` 3 and 0, alternating.

    .venv/bin/python -m bench.bench_checkpoint [--rounds 20] [--repeat 3] [--out DIR]

A local stack (Mosquitto, control plane, 3 flamelets with mldata, MLflow in SQLite under the
stack's home: checkpoints go to the run's artifacts) runs `examples/digits` (Dirichlet(0.5)
split, seed 0) `--repeat` times with checkpoints on and off, alternating (the machine is shared).
Reported: the median of each round's `duration_s` over rounds 2..N of all runs of a mode (pooled;
round 1 also loads the data) and the final accuracy. Writes `checkpoint.json` and prints a
Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ember.bundle_bus import submit_job
from ember.bus import Bus
from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.stack import Stack

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"


def digits_spec(rounds: int, checkpoints: int) -> dict[str, Any]:
    spec = yaml.safe_load((DIGITS / "job.yaml").read_text())
    spec["training"].update(rounds=rounds, checkpoints=checkpoints)
    spec["resources"] = {"cpus": 0.25, "memory_mb": 256}
    spec["code"].pop("requirements", None)  # numpy and pyarrow are in the stack's environment
    return spec


async def run_job(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    async with Bus(stack.url, source="bench") as bus:
        job = (await submit_job(bus, spec, DIGITS))["job"]
        while True:
            view = await bus.request("jobs.get", {"job": job}, timeout=10)
            if view["state"] in ("succeeded", "failed", "cancelled"):
                return view
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ember-bench-ckpt-"))
    home = out / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_LOG_FORMAT="json")
    durations: dict[str, list[float]] = {"on": [], "off": []}
    accuracy: dict[str, list[float]] = {"on": [], "off": []}
    with Stack(home, flamelets=3, env=env, grace=10) as stack:
        infos = {node: json.loads(stack.mldata_file(node).read_text()) for node in stack.nodes}
        split = partition_digits(sorted(infos), scheme="dirichlet", alpha=0.5, seed=0)
        for node, info in infos.items():
            put_table(split.nodes[node], "digits", info["url"], info["token"])
        for run in range(args.repeat):
            for mode in ("on", "off") if run % 2 == 0 else ("off", "on"):
                view = asyncio.run(run_job(stack, digits_spec(args.rounds, 3 if mode == "on" else 0)))
                if view["state"] != "succeeded":
                    print(f"{mode}: {view['state']}: {view['reason']}", file=sys.stderr)
                    return 1
                rounds = view["rounds"]
                durations[mode] += [r["duration_s"] for r in rounds[1:]]
                accuracy[mode].append(rounds[-1]["metrics"].get("eval_accuracy", float("nan")))
                print(f"run {run} checkpoints {mode}: median round {statistics.median(r['duration_s'] for r in rounds[1:]):.4f}s", file=sys.stderr)
    result = {
        mode: {"median_round_s": statistics.median(durations[mode]), "rounds": len(durations[mode]), "accuracy": accuracy[mode]}
        for mode in durations
    }
    (out / "checkpoint.json").write_text(json.dumps(result, indent=2))
    print("| checkpoints | median round (s), rounds 2..N pooled | rounds | final accuracy |")
    print("|---|---|---|---|")
    for mode in ("off", "on"):
        r = result[mode]
        print(f"| {mode} | {r['median_round_s']:.4f} | {r['rounds']} | {', '.join(f'{a:.3f}' for a in r['accuracy'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
