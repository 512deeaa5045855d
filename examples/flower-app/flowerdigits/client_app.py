"""The ClientApp: train and evaluate on this node's partition (`partition-id` of `num-partitions`).

Replies carry `compute_s` (the training or evaluation itself) and `load_s` (reading the
partition) so a benchmark can tell the learners' own compute from the engine's overhead.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerdigits import task

app = ClientApp()


def _data(context: Context) -> tuple:
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    cfg = context.run_config
    return pid, task.load_partition(pid, n, float(cfg.get("alpha", 0.5)), int(cfg.get("seed", 0)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    loaded = time.perf_counter()
    pid, (x_train, y_train, _, _) = _data(context)
    started = time.perf_counter()
    config, cfg = msg.content["config"], context.run_config
    params = task.train(
        msg.content["arrays"].to_numpy_ndarrays(), x_train, y_train,
        epochs=int(cfg.get("local-epochs", 1)), lr=float(cfg.get("learning-rate", 0.1)),
        batch_size=int(cfg.get("batch-size", 32)),
        seed=[int(cfg.get("seed", 0)), int(config.get("server-round", 0)), pid],
    )
    loss, accuracy = task.evaluate(params, x_train, y_train)
    metrics = MetricRecord({"train_loss": loss, "train_accuracy": accuracy, "num-examples": len(y_train),
                            "compute_s": time.perf_counter() - started, "load_s": started - loaded})
    return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    loaded = time.perf_counter()
    _, (_, _, x_test, y_test) = _data(context)
    started = time.perf_counter()
    loss, accuracy = task.evaluate(msg.content["arrays"].to_numpy_ndarrays(), x_test, y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(y_test),
                            "compute_s": time.perf_counter() - started, "load_s": started - loaded})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
