"""Federated training: the same Flower app under Ember and under Flower's own engines, one run.

    .venv/bin/python -m bench.bench_fl [--rounds 10] [--repeat 3] [--engines ember,compat,deployment] [--out DIR]

`examples/flower-app` (digits, softmax regression in numpy, Dirichlet(0.5) split over 3 nodes,
seed 0, FedAvg) runs unchanged on:

- **ember**: the local stack (Mosquitto, control plane, 3 flamelets), job submitted to the manager;
- **compat**: Flower's compatibility gRPC API (`start_server` / `start_client`), same task code;
- **deployment**: Flower's Deployment Engine (SuperLink + 3 SuperNodes + `flwr run`).

Measured inside the ServerApp, identically on every engine (see `bench_fl_engines`):

- per-round overhead = a round's wall time minus the slowest learner's train and evaluate
  compute; the median over rounds 2..N (round 1 also loads the data);     goal: Ember >= 50x lower
  than the Deployment Engine and no higher than the compatibility API;
- wall time of N rounds, from the start of round 1 to the end of round N;  goal: Ember <= 1.0x
  the faster of the two Flower engines;
- final accuracy on the held-out rows;                                     goal: within 1 point
  of plain Flower (both Flower engines).

Ember and compat run `--repeat` times, alternating (the machine is shared: medians over runs,
plus the per-round overheads of all runs pooled and the alternating pairs Ember won); the
Deployment Engine, minutes per run, runs once. Writes `fl.json` and prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_fl_engines import run_compat, run_deployment, run_ember

ENGINES = {"ember": run_ember, "compat": run_compat, "deployment": run_deployment}
LABELS = {"ember": "Ember (MQTT push)", "compat": "Flower compat gRPC API", "deployment": "Flower Deployment Engine"}


def analyse(summary: dict[str, Any]) -> dict[str, Any]:
    """Overhead per round, N-round wall time and accuracy from one engine's summary."""
    rounds = summary["round_seconds"]
    compute = [t + e for t, e in zip(summary["train_compute_s"], summary["evaluate_compute_s"], strict=True)]
    overhead = [r - c for r, c in zip(rounds, compute, strict=True)]
    steady = overhead[1:] or overhead
    return {
        "steady_overhead_s": steady,
        "rounds": len(rounds),
        "wall_s": sum(rounds),
        "round_median_s": statistics.median(rounds[1:] or rounds),
        "overhead_median_s": statistics.median(steady),
        "overhead_mean_s": statistics.fmean(steady),
        "compute_median_s": statistics.median(compute),
        "holdout_accuracy": summary["holdout_accuracy"],
        "federated_accuracy": summary["federated_accuracy"],
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over repeated runs of one engine, and the per-round overheads of all
    its runs pooled (median, 10th and 90th percentile: steadier than a median of run medians)."""
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "steady_overhead_s"}
    pooled = [o for r in runs for o in r["steady_overhead_s"]]
    deciles = statistics.quantiles(pooled, n=10) if len(pooled) > 1 else pooled * 9
    out.update(pooled_overhead_median_s=statistics.median(pooled), pooled_overhead_p10_s=deciles[0], pooled_overhead_p90_s=deciles[-1])
    out["run_overheads_s"] = [r["overhead_median_s"] for r in runs]
    out["runs"] = len(runs)
    return out


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios and goal checks (only for the engines that ran)."""
    out: dict[str, Any] = {}
    ember = results.get("ember")
    if ember is None:
        return out
    if "deployment" in results:
        out["overhead_deployment_over_ember"] = results["deployment"]["overhead_median_s"] / ember["overhead_median_s"]
        out["goal_overhead_50x_below_deployment"] = out["overhead_deployment_over_ember"] >= 50
    if "compat" in results:
        out["overhead_compat_over_ember"] = results["compat"]["overhead_median_s"] / ember["overhead_median_s"]
        out["goal_overhead_not_above_compat"] = ember["overhead_median_s"] <= results["compat"]["overhead_median_s"]
        out["pooled_overhead_compat_over_ember"] = results["compat"]["pooled_overhead_median_s"] / ember["pooled_overhead_median_s"]
        pairs = list(zip(ember["run_overheads_s"], results["compat"]["run_overheads_s"], strict=True))
        out["alternating_pairs_ember_not_above_compat"] = f"{sum(e <= c for e, c in pairs)} of {len(pairs)}"
    flower = [results[e] for e in ("compat", "deployment") if e in results]
    if flower:
        fastest = min(r["wall_s"] for r in flower)
        out["wall_ember_over_fastest_flower"] = ember["wall_s"] / fastest
        out["goal_wall_not_above_fastest_flower"] = ember["wall_s"] <= fastest
        gaps = [abs(ember["holdout_accuracy"] - r["holdout_accuracy"]) for r in flower]
        out["accuracy_max_gap_points"] = 100 * max(gaps)
        out["goal_accuracy_within_1_point"] = max(gaps) <= 0.01
    return out


def markdown(results: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> str:
    lines = [
        "| engine | per-round overhead (median, rounds 2..N) | all rounds pooled: median (p10-p90) | round wall time (median) | N-round wall time | held-out accuracy | federated accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        pooled = f"{1000 * r['pooled_overhead_median_s']:.1f} ms ({1000 * r['pooled_overhead_p10_s']:.1f}-{1000 * r['pooled_overhead_p90_s']:.1f})"
        lines.append(
            f"| {LABELS[name]} ({r['runs']} run{'s' if r['runs'] > 1 else ''}) | {1000 * r['overhead_median_s']:.1f} ms | {pooled} | {1000 * r['round_median_s']:.1f} ms | "
            f"{r['wall_s']:.2f} s ({r['rounds']:.0f} rounds) | {r['holdout_accuracy']:.4f} | {r['federated_accuracy']:.4f} |"
        )
    for name, r in results.items():
        if r["runs"] > 1:
            lines.append(f"\n{LABELS[name]}, each run's median overhead: " + ", ".join(f"{1000 * o:.1f}" for o in r["run_overheads_s"]) + " ms")
    if ratios:
        lines.append("")
        for key, value in ratios.items():
            lines.append(f"- {key}: {value:.2f}" if isinstance(value, float) else f"- {key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: the app's num-server-rounds, 10)")
    parser.add_argument("--engines", default="ember,compat,deployment", help="comma-separated subset of: " + ", ".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=3, help="runs of ember and compat, alternating (medians); deployment runs once")
    parser.add_argument("--out", type=Path, default=None, help="folder for logs and fl.json (default: a temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ember-bench-fl-"))
    out.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for attempt in range(args.repeat):
        for name in engines:
            if name == "deployment" and attempt > 0:
                continue  # minutes per run: once is enough to see seconds per round
            started = time.perf_counter()
            print(f"[bench_fl] {LABELS[name]} (run {attempt + 1}) ...", file=sys.stderr, flush=True)
            try:
                summary = ENGINES[name](out / f"{name}-{attempt + 1}", args.rounds)
            except Exception as exc:  # one engine failing must not hide the others' numbers
                print(f"[bench_fl] {name} failed: {exc}", file=sys.stderr, flush=True)
                raw.setdefault(name, []).append({"error": str(exc)})
                continue
            raw.setdefault(name, []).append(summary)
            runs.setdefault(name, []).append(analyse(summary))
            shown = {k: v for k, v in runs[name][-1].items() if k != "steady_overhead_s"}
            print(f"[bench_fl] {name}: {json.dumps(shown)} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    results = {name: combine(found) for name, found in runs.items()}
    ratios = compare(results)
    (out / "fl.json").write_text(json.dumps({"raw": raw, "results": results, "ratios": ratios}, indent=2))
    print(markdown(results, ratios))
    print(f"\n(raw numbers and logs in {out})")
    failed = [n for n, found in raw.items() if any("error" in r for r in found)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
