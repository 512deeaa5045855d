"""Fault detection on the mock edge devices' readings (data tag `sensors`).

`preprocess` turns the node's raw readings into windowed features (see `features.py`) and
splits every device's windows in time: the first 80% train, the last 20% test, with a gap of
one window between them so no reading is in both. The model is a logistic regression trained
by mini-batch SGD in numpy; its parameters are `[w (15,), b (1,)]`. Faults are the minority
class, so the loss weighs each class by the square root of the inverse of its share on the
node (halfway to "balanced"), and the metrics include precision, recall and F1 next to accuracy.

The final model is exported as a scikit-learn `LogisticRegression` with the same weights
(MLflow `sklearn` flavour): it predicts on the 15 feature columns `features.FEATURE_NAMES`
(`features.windowed(readings)[0]`).

`centralized_baseline(tables)` trains the same model on all nodes' windows pooled.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `features` next to this file

from features import FEATURE_NAMES, N_FEATURES, STRIDE, WINDOW, windowed  # noqa: E402

from ember.sdk import ModelManager, TrainConfig  # noqa: E402

TEST_FRACTION = 0.2


def split_by_time(owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and test windows: per device, the last TEST_FRACTION are test."""
    gap = WINDOW // STRIDE
    train, test = [], []
    for device in np.unique(owners):
        idx = np.flatnonzero(owners == device)
        n_test = int(round(len(idx) * TEST_FRACTION))
        cut = len(idx) - n_test
        train.append(idx[: max(0, cut - gap)])
        test.append(idx[cut:])
    if not train:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(train), np.concatenate(test)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def pooled_scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall and F1 from confusion counts (or from fractions of the examples)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1, and the confusion counts as fractions of the examples.

    Flower averages metrics weighted by examples: the mean of `tp_frac` over nodes is the
    pooled share of true positives, so `pooled_scores(tp_frac, fp_frac, fn_frac)` of the
    aggregated fractions gives the federation's pooled precision/recall/F1 (a weighted mean
    of per-node F1 would not).
    """
    n = max(len(y), 1)
    tp = float(np.sum((pred == 1) & (y == 1)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    return {
        "accuracy": float(np.mean(pred == y)) if len(y) else 0.0,
        **pooled_scores(tp, fp, fn),
        "tp_frac": tp / n,
        "fp_frac": fp / n,
        "fn_frac": fn / n,
    }


class SensorModel(ModelManager):
    """Logistic regression on 15 windowed features; parameters `[w (15,), b (1,)]`."""

    def __init__(self) -> None:
        self.w = np.zeros(N_FEATURES)
        self.b = np.zeros(1)
        self.x_train = self.x_test = np.zeros((0, N_FEATURES))
        self.y_train = self.y_test = np.zeros(0, np.int64)

    # --- the six SDK methods ----------------------------------------------------------------
    def build(self, config: TrainConfig) -> None:
        self.w = np.zeros(N_FEATURES)
        self.b = np.zeros(1)

    def preprocess(self, table: pa.Table, config: TrainConfig) -> None:
        x, y, _, owners = windowed(table)
        if y is None:
            raise ValueError("the readings have no 'fault' column to learn from")
        train, test = split_by_time(owners)
        self.x_train, self.y_train = x[train], y[train]
        self.x_test, self.y_test = x[test], y[test]

    def get_parameters(self) -> list[np.ndarray]:
        return [self.w.copy(), self.b.copy()]

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        w, b = (np.asarray(p, dtype=np.float64).reshape(-1) for p in parameters)
        if w.shape != (N_FEATURES,) or b.shape != (1,):
            raise ValueError(f"expected shapes ({N_FEATURES},) and (1,), got {w.shape} and {b.shape}")
        self.w, self.b = w.copy(), b.copy()

    def fit(self, config: TrainConfig) -> tuple[int, dict[str, float]]:
        n = len(self.y_train)
        if n == 0:
            return 0, {}
        rng = np.random.default_rng([config.seed, config.round, zlib.crc32(config.node.encode())])
        share = float(np.clip(self.y_train.mean(), 0.05, 0.95))
        weights = np.sqrt(np.where(self.y_train == 1, 0.5 / share, 0.5 / (1.0 - share)))
        for _ in range(config.local_epochs):
            order = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                err = (sigmoid(self.x_train[idx] @ self.w + self.b[0]) - self.y_train[idx]) * weights[idx]
                self.w -= config.learning_rate * (self.x_train[idx].T @ err) / len(idx)
                self.b -= config.learning_rate * err.mean()
        loss, metrics = self._score(self.x_train, self.y_train)
        return n, {"loss": loss, "accuracy": metrics["accuracy"], "f1": metrics["f1"]}  # reported as train_*

    def evaluate(self, config: TrainConfig) -> tuple[float, int, dict[str, float]]:
        if len(self.y_test) == 0:
            return 0.0, 0, {}
        loss, metrics = self._score(self.x_test, self.y_test)
        return loss, len(self.y_test), {**metrics, "loss": loss}

    # --- model export -----------------------------------------------------------------------
    def model_flavor(self) -> str:
        return "sklearn"

    def export_model(self) -> Any:
        """A `LogisticRegression` with these weights, predicting 0/1 from the 15 features."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression()
        model.classes_ = np.array([0, 1])
        model.coef_ = self.w.reshape(1, -1).copy()
        model.intercept_ = self.b.copy()
        model.n_features_in_ = N_FEATURES
        model.n_iter_ = np.array([0])
        return model

    def predict(self, features: Any) -> np.ndarray:
        """0/1 for each row of features (DataFrame with FEATURE_NAMES columns or an (n, 15) array)."""
        if hasattr(features, "columns") and FEATURE_NAMES[0] in features.columns:
            features = features[FEATURE_NAMES]
        x = np.asarray(features, dtype=np.float64)
        return (sigmoid(x @ self.w + self.b[0]) >= 0.5).astype(np.int64)

    # --- helpers ----------------------------------------------------------------------------
    def _score(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
        p = sigmoid(x @ self.w + self.b[0])
        loss = float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
        return loss, classification_metrics(y, (p >= 0.5).astype(np.int64))


def centralized_baseline(tables: Iterable[pa.Table], config: TrainConfig | None = None, epochs: int = 10) -> dict[str, float]:
    """The same model trained on all nodes' windows pooled, evaluated on the pooled test windows.

    Every node's table is windowed and split exactly as its learner does, so the test windows
    are the ones the federated learners evaluate on. Returns accuracy, precision, recall, f1,
    loss and `examples`.
    """
    config = config or TrainConfig()
    parts = []
    for table in tables:
        node = SensorModel()
        node.preprocess(table, config)
        parts.append(node)
    model = SensorModel()
    model.build(config)
    model.x_train = np.concatenate([p.x_train for p in parts])
    model.y_train = np.concatenate([p.y_train for p in parts])
    model.x_test = np.concatenate([p.x_test for p in parts])
    model.y_test = np.concatenate([p.y_test for p in parts])
    for epoch in range(1, epochs + 1):
        model.fit(TrainConfig(round=epoch, local_epochs=1, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, seed=config.seed, node="central"))
    loss, n, metrics = model.evaluate(config)
    return {**metrics, "loss": loss, "examples": float(n)}
