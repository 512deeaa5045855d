"""The aggregator's training loop: Flower's own strategies (or a user's ServerApp) on a Grid.

- ModelManager jobs: `run_model_manager` builds the spec's strategy
  (`ember.fl.strategies.strategy_class` + `strategy_params`; fractions and minimums from the
  spec) and drives it with `strategy.start(grid=..., initial_arrays=..., num_rounds=...,
  timeout=round_timeout, evaluate_fn=...)`. Flower calls `evaluate_fn` after every round:
  Ember uses it to load the round's global model into the aggregator's ModelManager and to
  report the round (the strategy's aggregated train and evaluate metrics). With a checkpoint
  to resume from, it starts from the checkpoint's model, strategy state and `random` state and
  runs the remaining rounds, numbered on from the checkpoint's (Flower's `start` counts from 1:
  the strategy's per-round calls are shifted). After every round `on_checkpoint` gets a
  `Checkpoint` of it.
- Flower apps: `run_server_app` calls the user's `ServerApp` with the grid and a `Context`,
  exactly as Flower's runtime would; the app does not know it runs on Ember.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from ember.fl import flwr_compat as compat
from ember.fl.checkpoint import Checkpoint, restore_strategy, rng_from_json, rng_to_json, strategy_state
from ember.fl.clientapp import load_ref
from ember.fl.rounds import flatten_metrics
from ember.fl.strategies import strategy_class
from ember.jobspec import JobSpec
from ember.log import get_logger
from ember.sdk.model import ModelManager

log = get_logger("ember.fl.serverapp")

RoundCallback = Callable[[int, dict[str, float]], dict[str, Any] | None]
"""Called after each round; may return the round's `RoundCompleted` data for the checkpoint's history."""
CheckpointCallback = Callable[[Checkpoint], None]


def build_strategy(spec: JobSpec) -> Any:
    """The spec's Flower strategy object (e.g. `flwr.serverapp.strategy.FedAvg(...)`)."""
    training, minimum = spec.training, spec.learners.minimum
    kwargs: dict[str, Any] = {
        "fraction_train": training.fraction_train,
        "fraction_evaluate": training.fraction_evaluate,
        "min_train_nodes": minimum,
        "min_evaluate_nodes": minimum,
        "min_available_nodes": minimum,
    }
    kwargs.update(training.strategy_params)
    return strategy_class(training.strategy)(**kwargs)


def train_config(spec: JobSpec) -> ConfigRecord:
    t = spec.training
    return ConfigRecord({"local-epochs": t.local_epochs, "batch-size": t.batch_size, "learning-rate": t.learning_rate, "seed": t.seed})


def run_model_manager(
    grid: Grid,
    manager: ModelManager,
    spec: JobSpec,
    on_round: RoundCallback,
    *,
    resume: Checkpoint | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> list[np.ndarray]:
    """Run `training.rounds` rounds (those after `resume.round` when resuming); returns the final
    global parameters (also in `manager`)."""
    strategy = build_strategy(spec)
    offset = 0
    random.seed(spec.training.seed)  # Flower samples nodes with the global `random`
    if resume is not None:
        offset = resume.round
        manager.set_parameters(resume.parameters)
        warning = restore_strategy(strategy, resume.strategy)
        if warning:
            log.warning("checkpoint.strategy_state_not_restored", strategy=spec.training.strategy, reason=warning)
        if resume.rng is not None:
            random.setstate(rng_from_json(resume.rng))
    captured: dict[int, dict[str, Any]] = {}
    configure_train, configure_evaluate = strategy.configure_train, strategy.configure_evaluate
    aggregate_train, aggregate_evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

    def shifted_configure_train(server_round: int, *args: Any) -> Any:
        return configure_train(server_round + offset, *args)

    def shifted_configure_evaluate(server_round: int, *args: Any) -> Any:
        return configure_evaluate(server_round + offset, *args)

    def capture_train(server_round: int, replies: Any) -> Any:
        arrays, metrics = aggregate_train(server_round + offset, replies)
        captured.setdefault(server_round + offset, {})["train"] = metrics
        return arrays, metrics

    def capture_evaluate(server_round: int, replies: Any) -> Any:
        metrics = aggregate_evaluate(server_round + offset, replies)
        captured.setdefault(server_round + offset, {})["evaluate"] = metrics
        return metrics

    strategy.configure_train, strategy.configure_evaluate = shifted_configure_train, shifted_configure_evaluate
    strategy.aggregate_train, strategy.aggregate_evaluate = capture_train, capture_evaluate
    history: list[dict[str, Any]] = list(resume.history) if resume is not None else []

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round == 0:
            return None
        number = server_round + offset
        parameters = arrays.to_numpy_ndarrays()
        manager.set_parameters(parameters)
        got = captured.pop(number, {})
        metrics = flatten_metrics(got.get("train"), got.get("evaluate"))
        reported = on_round(number, metrics)
        if on_checkpoint is not None:
            history.append(reported or {"round": number, "metrics": metrics})
            on_checkpoint(
                Checkpoint(
                    round=number,
                    parameters=parameters,
                    strategy=strategy_state(strategy),
                    history=list(history),
                    rng=rng_to_json(random.getstate()),
                    strategy_name=spec.training.strategy,
                )
            )
        return None

    config = train_config(spec)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(manager.get_parameters()),
        num_rounds=spec.training.rounds - offset,
        timeout=spec.training.round_timeout,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=after_round,
    )
    final = result.arrays.to_numpy_ndarrays() if result.arrays is not None else manager.get_parameters()
    manager.set_parameters(final)
    return final


def run_server_app(grid: Grid, spec: JobSpec, code_dir: str | Path | None = None) -> Context:
    """Call the user's `ServerApp` (`code.serverapp`) with this grid, as Flower would."""
    if not spec.code.serverapp:
        raise ValueError("the job has no code.serverapp")
    app = load_ref(spec.code.serverapp, code_dir)
    if not isinstance(app, ServerApp):
        raise TypeError(f"{spec.code.serverapp} is not a flwr.serverapp.ServerApp")
    context = Context(
        run_id=grid.run.run_id,
        node_id=compat.AGGREGATOR_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=compat.run_config_from_dir(code_dir) if code_dir else {},
    )
    app(grid, context)
    return context
