"""Windowed features and labels from raw machine readings (the user's own preprocessing).

Input: a readings table with `ts`, `device`, the five channels and (for training) `fault`.
Per device, sorted by `ts`:

1. each channel is turned into a *residual* against the device's own operating curve: a
   least-squares fit of the channel on `[1, rpm, rpm^2]` (rpm itself on `[1, current,
   current^2]`), over all of the device's readings, divided by a robust spread (MAD). Machines
   on different nodes run at different operating points; residuals make them comparable
   without any statistics leaving the node.
2. windows of `WINDOW` readings every `STRIDE` readings: rolling mean, std and max of each
   residual channel -> `N_FEATURES` = 15 features.
3. label: 1 when at least half of the window's readings are labelled `fault`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHANNELS = ("temperature_c", "vibration_rms", "pressure_bar", "motor_current_a", "rpm")
STATS = ("mean", "std", "max")
FEATURE_NAMES = [f"{c}_{s}" for c in CHANNELS for s in STATS]
N_FEATURES = len(FEATURE_NAMES)
WINDOW = 30
STRIDE = 5


def _residuals(values: np.ndarray) -> np.ndarray:
    """(n, 5) channels -> (n, 5) robust-scaled residuals against the operating curve."""
    rpm, current = values[:, 4], values[:, 3]
    out = np.empty_like(values)
    for j in range(values.shape[1]):
        driver = current if j == 4 else rpm
        scale = max(float(np.abs(driver).max()), 1e-9)
        d = driver / scale
        design = np.column_stack([np.ones_like(d), d, d * d])
        coef, *_ = np.linalg.lstsq(design, values[:, j], rcond=None)
        resid = values[:, j] - design @ coef
        mad = float(np.median(np.abs(resid - np.median(resid)))) * 1.4826
        out[:, j] = resid / max(mad, 1e-9)
    return np.clip(out, -50.0, 50.0)


def _windows(resid: np.ndarray, fault: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Features of every full window, its label and the index of its last reading."""
    n = len(resid)
    if n < WINDOW:
        return np.zeros((0, N_FEATURES)), None if fault is None else np.zeros(0, np.int64), np.zeros(0, np.int64)
    view = np.lib.stride_tricks.sliding_window_view(resid, WINDOW, axis=0)[::STRIDE]  # (w, 5, WINDOW)
    feats = np.stack([view.mean(axis=2), view.std(axis=2), view.max(axis=2)], axis=2).reshape(len(view), -1)
    ends = np.arange(WINDOW - 1, n, STRIDE)[: len(view)]
    labels = None
    if fault is not None:
        fview = np.lib.stride_tricks.sliding_window_view(fault, WINDOW)[::STRIDE]
        labels = (fview.mean(axis=1) >= 0.5).astype(np.int64)
    return feats, labels, ends


def windowed(table: pa.Table) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(features (n, 15), labels (n,) or None, window end ts (n,), device index (n,)).

    Windows of each device are in time order; devices in sorted order.
    """
    has_label = "fault" in table.column_names
    devices = sorted(pc.unique(table.column("device")).to_pylist()) if table.num_rows else []
    feats, labels, ends, owners = [], [], [], []
    for k, device in enumerate(devices):
        rows = table.filter(pc.equal(table.column("device"), device)).sort_by("ts")
        values = np.column_stack([rows.column(c).to_numpy(zero_copy_only=False) for c in CHANNELS]).astype(np.float64)
        ok = np.isfinite(values).all(axis=1)
        values = values[ok]
        ts = rows.column("ts").to_numpy(zero_copy_only=False)[ok]
        fault = rows.column("fault").to_numpy(zero_copy_only=False)[ok].astype(np.int64) if has_label else None
        f, y, end = _windows(_residuals(values), fault)
        feats.append(f)
        ends.append(ts[end])
        owners.append(np.full(len(f), k))
        if y is not None:
            labels.append(y)
    if not feats:
        return np.zeros((0, N_FEATURES)), (np.zeros(0, np.int64) if has_label else None), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.concatenate(feats),
        np.concatenate(labels) if has_label else None,
        np.concatenate(ends),
        np.concatenate(owners),
    )
