"""What MLflow's tracking server costs `ember up`: time until the stack is ready, with and without it.

    .venv/bin/python bench/bench_stack_start.py [--runs 3] [--flamelets 3]

Alternates a stack that runs MLflow's server (the default) with one told `EMBER_MLFLOW_TRACKING_URI=none`,
each in a fresh `EMBER_HOME` (so the server creates its store, as on a first `ember up`), and prints the
median time to ready of each, how long after the nodes were up the server answered, and the load average.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from ember.stack import Stack


def start_once(tracking: bool, flamelets: int) -> tuple[float, float]:
    """(seconds to ready, seconds the server answered after the nodes were up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    if not tracking:
        env["EMBER_MLFLOW_TRACKING_URI"] = "none"
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="ember-bench-start-") as home:
        began = time.monotonic()
        with Stack(Path(home), flamelets=flamelets, env=env, echo=out):
            ready = time.monotonic() - began
    late = re.search(r"answered ([\d.]+)s after the nodes were up", out.getvalue())
    return ready, float(late.group(1)) if late else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flamelets", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    loads = []
    for _ in range(args.runs):
        for tracking in (True, False):
            results[tracking].append(start_once(tracking, args.flamelets))
            loads.append(os.getloadavg()[0])
    for tracking, runs in results.items():
        ready = statistics.median(r for r, _ in runs)
        late = statistics.median(lag for _, lag in runs)
        label = "with MLflow's server" if tracking else "tracking off        "
        print(f"{label}: ready in {ready:5.1f}s (median of {len(runs)}; runs {', '.join(f'{r:.1f}' for r, _ in runs)})"
              + (f"; the server answered {late:.1f}s after the nodes were up" if tracking else ""))
    print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
