"""Data and model of the app: scikit-learn's bundled digits and softmax regression in numpy.

`load_partition(pid, n)` is deterministic: a stratified 20% of the digits is held out for the
server (`load_holdout`), the rest is spread over `n` partitions by Dirichlet(alpha) label
proportions; each partition keeps 20% of its rows for local evaluation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

N_FEATURES, N_CLASSES = 64, 10
HOLDOUT_FRACTION = 0.2
LOCAL_TEST_FRACTION = 0.2
MIN_ROWS = 10


@lru_cache(maxsize=4)
def _digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = np.asarray(data.data, np.float64) / 16.0, np.asarray(data.target, np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(x, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed)
    return x_tr, y_tr, x_ho, y_ho


def dirichlet_split(labels: np.ndarray, n: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Row indices of each of `n` parts; each class is spread by Dirichlet(alpha) shares."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for cls in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha)))[:-1] * len(rows)).astype(int)
            for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
                part.append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= MIN_ROWS:
            return out
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n)]


@lru_cache(maxsize=8)
def load_partition(pid: int, n: int, alpha: float = 0.5, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) of partition `pid` out of `n`."""
    x, y, _, _ = _digits(seed)
    rows = dirichlet_split(y, n, alpha, seed)[pid]
    order = np.random.default_rng([seed, pid]).permutation(len(rows))
    n_test = max(1, int(round(len(rows) * LOCAL_TEST_FRACTION)))
    test, train = rows[np.sort(order[:n_test])], rows[np.sort(order[n_test:])]
    return x[train], y[train], x[test], y[test]


def load_holdout(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows no partition holds, for the server's centralized evaluation."""
    _, _, x, y = _digits(seed)
    return x, y


def initial_parameters() -> list[np.ndarray]:
    return [np.zeros((N_FEATURES, N_CLASSES)), np.zeros(N_CLASSES)]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
          batch_size: int, seed: list[int]) -> list[np.ndarray]:
    """Mini-batch SGD on the cross-entropy; returns new parameters."""
    W, b = (np.array(p, dtype=np.float64) for p in params)
    rng = np.random.default_rng(seed)
    onehot = np.eye(N_CLASSES)[y]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            grad = (_softmax(x[idx] @ W + b) - onehot[idx]) / len(idx)
            W -= lr * (x[idx].T @ grad)
            b -= lr * grad.sum(axis=0)
    return [W, b]


def evaluate(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cross-entropy loss, accuracy)."""
    W, b = params
    p = _softmax(x @ W + b)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(np.argmax(p, axis=1) == y))
