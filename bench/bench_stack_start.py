"""What MLflow's tracking server costs `ember up`: time until the stack is ready, with and without it.

    .venv/bin/python bench/bench_stack_start.py [--runs 3] [--flamelets 3]

Alternates three stacks, each in a fresh `EMBER_HOME` (so the server creates its store, as on a first
`ember up`): one told `EMBER_MLFLOW_TRACKING_URI=none`, one running MLflow's server (the default: ready
once the nodes are up, the server answering later), and one that also waits for the server to answer
(`await_tracking`). Prints the median time to ready of each, when the server answered, and the load.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from ember.stack import Stack


MODES = {"off": "tracking off", "parallel": "MLflow's server (default)", "awaited": "MLflow's server, awaited"}


def start_once(mode: str, flamelets: int) -> tuple[float, float]:
    """(seconds to ready, seconds from the start until the server answered; 0 without one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    if mode == "off":
        env["EMBER_MLFLOW_TRACKING_URI"] = "none"
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="ember-bench-start-") as home:
        began = time.monotonic()
        with Stack(Path(home), flamelets=flamelets, env=env, echo=out, await_tracking=mode == "awaited") as stack:
            ready = time.monotonic() - began
            stack.wait_tracking()
            answered = time.monotonic() - began if mode != "off" else 0.0
    return ready, answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flamelets", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    loads = []
    for _ in range(args.runs):
        for mode in MODES:
            results[mode].append(start_once(mode, args.flamelets))
            loads.append(os.getloadavg()[0])
    for mode, runs in results.items():
        ready = statistics.median(r for r, _ in runs)
        answered = statistics.median(a for _, a in runs)
        print(f"{MODES[mode]:<26}: ready in {ready:5.1f}s (median of {len(runs)}; runs {', '.join(f'{r:.1f}' for r, _ in runs)})"
              + (f"; the server answered {answered:.1f}s after the start" if mode != "off" else ""))
    print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
