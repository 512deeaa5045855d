"""A tiny numpy ModelManager for Ember's FL tests: linear regression y = x @ w + b."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ember.sdk import ModelManager, TrainConfig

FEATURES = ("x0", "x1")
TRUE_W = np.array([2.0, -1.0])
TRUE_B = 0.5


def make_table(rows: int, seed: int) -> pa.Table:
    """Noisy samples of the true line; each learner gets its own seed."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.05, size=rows)
    return pa.table({"x0": x[:, 0], "x1": x[:, 1], "y": y})


class TinyModel(ModelManager):
    def build(self, config: TrainConfig) -> None:
        self.w = np.zeros(2)
        self.b = np.zeros(1)

    def preprocess(self, table: pa.Table, config: TrainConfig) -> None:
        x = np.column_stack([table[name].to_numpy() for name in FEATURES])
        y = table["y"].to_numpy()
        split = int(len(y) * 0.8)
        self.x_train, self.y_train, self.x_test, self.y_test = x[:split], y[:split], x[split:], y[split:]

    def get_parameters(self) -> list[np.ndarray]:
        return [self.w.copy(), self.b.copy()]

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        self.w, self.b = np.asarray(parameters[0], dtype=float), np.asarray(parameters[1], dtype=float)

    def fit(self, config: TrainConfig) -> tuple[int, dict[str, float]]:
        time.sleep(float(os.environ.get("TINY_FIT_SECONDS", "0")))  # emulates a heavier model's compute
        for _ in range(config.local_epochs * 10):
            error = self.x_train @ self.w + self.b - self.y_train
            self.w = self.w - config.learning_rate * (self.x_train.T @ error) / len(error)
            self.b = self.b - config.learning_rate * np.array([error.mean()])
        return len(self.y_train), {"mse": float(np.mean((self.x_train @ self.w + self.b - self.y_train) ** 2))}

    def evaluate(self, config: TrainConfig) -> tuple[float, int, dict[str, float]]:
        mse = float(np.mean((self.x_test @ self.w + self.b - self.y_test) ** 2))
        return mse, len(self.y_test), {"mse": mse}

    def predict(self, features: Any) -> np.ndarray:
        if hasattr(features, "columns"):
            features = features[list(FEATURES)].to_numpy()
        return np.asarray(features, dtype=float) @ self.w + self.b
