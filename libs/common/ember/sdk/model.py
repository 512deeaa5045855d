"""`ModelManager`: the one class a data scientist writes for Ember.

Ember creates one instance per actor. On a learner it calls, in order:

1. `build(config)` once: create the model (random or fixed init; all learners must agree on shapes).
2. `preprocess(table, config)` once: `table` is a `pyarrow.Table` holding every partition of the
   job's data tags that this node's mldata holds. Turn it into your own train/test data and keep
   it on `self` (Ember never looks at it, and it never leaves the node).
3. each round: `set_parameters(global)`, then `fit(config)` -> `(examples_used, metrics)`, and
   `evaluate(config)` -> `(loss, examples_used, metrics)` when the round evaluates.

On the aggregator Ember calls `build(config)` and `get_parameters()` for the initial global
model, `set_parameters` with each round's aggregate, and finally `log_model` to record it.

`config` is a `TrainConfig`: the job's training section plus the round number.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class TrainConfig:
    """What a ModelManager method may use; `extra` carries the strategy's per-round config."""

    round: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    node: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ModelManager(ABC):
    """Subclass this and implement the six methods; see the module docstring for the call order."""

    @abstractmethod
    def build(self, config: TrainConfig) -> None:
        """Create the model. Called once per actor, before anything else."""

    @abstractmethod
    def preprocess(self, table: pa.Table, config: TrainConfig) -> None:
        """Turn this node's data (all partitions of the job's tags, merged) into train/test sets."""

    @abstractmethod
    def get_parameters(self) -> list[np.ndarray]:
        """The model's parameters as a list of numpy arrays (same order as `set_parameters`)."""

    @abstractmethod
    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        """Load parameters (the global model of this round)."""

    @abstractmethod
    def fit(self, config: TrainConfig) -> tuple[int, dict[str, float]]:
        """Train locally; return (number of training examples used, metrics)."""

    @abstractmethod
    def evaluate(self, config: TrainConfig) -> tuple[float, int, dict[str, float]]:
        """Evaluate on the local test set; return (loss, number of examples, metrics)."""

    # Optional hooks -----------------------------------------------------------------------
    def model_flavor(self) -> str:
        """MLflow flavour for the final model: 'sklearn', 'pytorch' or 'pyfunc' (default)."""
        return "pyfunc"

    def export_model(self) -> Any:
        """The object MLflow logs with `model_flavor()` (e.g. a fitted sklearn estimator).

        The default (pyfunc) logs this ModelManager itself, whose `predict` must then work.
        """
        return self

    def predict(self, features: Any) -> Any:
        """Predictions for a pandas DataFrame or numpy array (used by the pyfunc flavour)."""
        raise NotImplementedError("implement predict() or export_model()/model_flavor()")
