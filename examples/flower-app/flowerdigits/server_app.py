"""The ServerApp: FedAvg over all nodes for `num-server-rounds`, centralized evaluation on the
held-out rows after every round, the final accuracy printed and saved next to the run."""

from __future__ import annotations

import json
import os
import time

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flowerdigits import task

app = ServerApp()


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of every metric, except times (`compute_s`, `load_s`): the slowest node's."""
    weights = [float(r["metrics"][weight_key]) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    for key in records[0]["metrics"]:
        values = [float(r["metrics"][key]) for r in records]
        if key in ("compute_s", "load_s"):
            out[key] = max(values)
        elif key == weight_key:
            out[key] = sum(values)
        else:
            out[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    return MetricRecord(out)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, seed = int(cfg.get("num-server-rounds", 10)), int(cfg.get("seed", 0))
    min_nodes = int(cfg.get("min-nodes", 2))
    x_holdout, y_holdout = task.load_holdout(seed)
    marks: dict[int, float] = {}

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        marks[server_round] = time.perf_counter()
        loss, accuracy = task.evaluate(arrays.to_numpy_ndarrays(), x_holdout, y_holdout)
        return MetricRecord({"holdout_loss": loss, "holdout_accuracy": accuracy})

    strategy = FedAvg(
        fraction_train=1.0,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
        fraction_evaluate=float(cfg.get("fraction-evaluate", 1.0)),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_parameters()),
        num_rounds=rounds,
        evaluate_fn=central,
    )
    def series(metrics: dict[int, MetricRecord], key: str) -> list[float]:
        return [float(metrics[r][key]) if r in metrics and key in metrics[r] else float("nan") for r in range(1, rounds + 1)]

    train_m, eval_m = result.train_metrics_clientapp, result.evaluate_metrics_clientapp
    summary = {
        "rounds": rounds,
        "holdout_accuracy": float(result.evaluate_metrics_serverapp[rounds]["holdout_accuracy"]),
        "federated_accuracy": series(eval_m, "accuracy")[-1],
        "round_seconds": [marks[r] - marks[r - 1] for r in range(1, rounds + 1)],
        "train_compute_s": series(train_m, "compute_s"),
        "evaluate_compute_s": series(eval_m, "compute_s"),
        "load_s": [a + b for a, b in zip(series(train_m, "load_s"), series(eval_m, "load_s"), strict=True)],
    }
    print("FLOWERDIGITS_RESULT " + json.dumps(summary), flush=True)
    if out := os.environ.get("FLOWERDIGITS_RESULT_FILE"):
        with open(out, "w") as fh:
            json.dump(summary, fh)
