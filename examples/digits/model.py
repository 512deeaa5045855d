"""Handwritten digits (scikit-learn's bundled 8x8 `load_digits`) with multinomial logistic
regression (softmax) trained by mini-batch SGD in numpy.

Each node's table has the columns `pixel_0` .. `pixel_63` (0..16) and `label` (0..9), as made
by `ember.devices.partition.partition_digits`. The parameters are two numpy arrays, `W`
(64 x 10) and `b` (10,), so every Flower strategy can average them. The final model is
exported as a scikit-learn `LogisticRegression` carrying the same weights (MLflow `sklearn`
flavour), so `mlflow.pyfunc.load_model(...).predict(rows)` works on raw pixel rows.

`centralized_baseline(tables)` trains the same model on all nodes' data pooled, for the
comparison a federated result should be judged against.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from ember.sdk import ModelManager, TrainConfig

N_FEATURES = 64
N_CLASSES = 10
PIXELS = [f"pixel_{i}" for i in range(N_FEATURES)]
SCALE = 16.0
TEST_FRACTION = 0.2


def arrays_of(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(features scaled to 0..1, labels) of a digits table."""
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in PIXELS]).astype(np.float64) / SCALE
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    return x, y


def local_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of a node's rows (the test part never trains)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION))) if n > 1 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class DigitsModel(ModelManager):
    """Softmax regression on 64 pixels; parameters `[W (64, 10), b (10,)]`."""

    def __init__(self) -> None:
        self.W = np.zeros((N_FEATURES, N_CLASSES))
        self.b = np.zeros(N_CLASSES)
        self.x_train = self.x_test = np.zeros((0, N_FEATURES))
        self.y_train = self.y_test = np.zeros(0, np.int64)

    # --- the six SDK methods ----------------------------------------------------------------
    def build(self, config: TrainConfig) -> None:
        self.W = np.zeros((N_FEATURES, N_CLASSES))
        self.b = np.zeros(N_CLASSES)

    def preprocess(self, table: pa.Table, config: TrainConfig) -> None:
        x, y = arrays_of(table)
        train, test = local_split(len(y), config.seed)
        self.x_train, self.y_train = x[train], y[train]
        self.x_test, self.y_test = x[test], y[test]

    def get_parameters(self) -> list[np.ndarray]:
        return [self.W.copy(), self.b.copy()]

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        W, b = (np.asarray(p, dtype=np.float64) for p in parameters)
        if W.shape != (N_FEATURES, N_CLASSES) or b.shape != (N_CLASSES,):
            raise ValueError(f"expected shapes (64, 10) and (10,), got {W.shape} and {b.shape}")
        self.W, self.b = W.copy(), b.copy()

    def fit(self, config: TrainConfig) -> tuple[int, dict[str, float]]:
        n = len(self.y_train)
        if n == 0:
            return 0, {}
        rng = np.random.default_rng([config.seed, config.round, zlib.crc32(config.node.encode())])
        onehot = np.eye(N_CLASSES)[self.y_train]
        for _ in range(config.local_epochs):
            order = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                p = softmax(self.x_train[idx] @ self.W + self.b)
                grad = (p - onehot[idx]) / len(idx)
                self.W -= config.learning_rate * (self.x_train[idx].T @ grad)
                self.b -= config.learning_rate * grad.sum(axis=0)
        loss, accuracy = self._score(self.x_train, self.y_train)
        return n, {"loss": loss, "accuracy": accuracy}  # Ember reports them as train_loss, train_accuracy

    def evaluate(self, config: TrainConfig) -> tuple[float, int, dict[str, float]]:
        if len(self.y_test) == 0:
            return 0.0, 0, {}
        loss, accuracy = self._score(self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": accuracy, "loss": loss}

    # --- model export -----------------------------------------------------------------------
    def model_flavor(self) -> str:
        return "sklearn"

    def export_model(self) -> Any:
        """A fitted-looking `LogisticRegression` with these weights; it takes raw pixels (0..16)."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression()
        model.classes_ = np.arange(N_CLASSES)
        model.coef_ = (self.W / SCALE).T.copy()
        model.intercept_ = self.b.copy()
        model.n_features_in_ = N_FEATURES
        model.n_iter_ = np.array([0])
        return model

    def predict(self, features: Any) -> np.ndarray:
        """Class labels for raw pixel rows (DataFrame with `pixel_*` columns or an (n, 64) array)."""
        if hasattr(features, "columns") and "pixel_0" in features.columns:
            features = features[PIXELS]
        x = np.asarray(features, dtype=np.float64) / SCALE
        return np.argmax(x @ self.W + self.b, axis=1)

    # --- helpers ----------------------------------------------------------------------------
    def _score(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        p = softmax(x @ self.W + self.b)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        return loss, float(np.mean(np.argmax(p, axis=1) == y))


def centralized_baseline(tables: Iterable[pa.Table], config: TrainConfig | None = None, epochs: int = 10) -> dict[str, float]:
    """Train the same model on every node's data pooled; evaluate on the pooled local test splits.

    Each table is split exactly as its node splits it, so the test rows are the same rows the
    federated learners evaluate on. Returns `{"accuracy", "loss", "examples"}`.
    """
    config = config or TrainConfig()
    parts = []
    for table in tables:
        node = DigitsModel()
        node.preprocess(table, config)
        parts.append(node)
    model = DigitsModel()
    model.build(config)
    model.x_train = np.concatenate([p.x_train for p in parts])
    model.y_train = np.concatenate([p.y_train for p in parts])
    model.x_test = np.concatenate([p.x_test for p in parts])
    model.y_test = np.concatenate([p.y_test for p in parts])
    for epoch in range(1, epochs + 1):
        model.fit(TrainConfig(round=epoch, local_epochs=1, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, seed=config.seed, node="central"))
    loss, n, metrics = model.evaluate(config)
    return {"accuracy": metrics.get("accuracy", 0.0), "loss": loss, "examples": float(n)}
