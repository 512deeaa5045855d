"""Who a simulated machine is: node operating points, per-device jitter, fault schedule.

Everything here is a pure function of `(seed, node, device index)`, so a mock fleet is
reproducible and two nodes with different names get different machines and fault rates
(the federation is non-IID). Nothing here draws per-sample noise; see `ember.devices.sensors`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

FAULT_KINDS: tuple[str, ...] = ("bearing_wear", "pressure_leak", "overload")
"""Fault kinds in the order of their integer codes (1, 2, 3); 0 means healthy."""


def stable_key(text: str) -> int:
    """A process-independent 32-bit key for a string (Python's `hash` is salted)."""
    return zlib.crc32(text.encode())


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A numpy Generator seeded by `seed` and any number of integer keys."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in keys)])


@dataclass(frozen=True)
class NodeProfile:
    """Operating point shared by every machine on one node, and how often it breaks."""

    node: str
    ambient_c: float
    rpm_nominal: float
    pressure_bar: float
    current_a: float
    vibration_rms: float
    load_level: float
    """Typical load factor while in the `load` phase (0..1)."""
    idle_share: float
    """Rough share of time spent idle."""
    fault_share: float
    """Expected share of time spent in a fault episode."""
    fault_weights: tuple[float, ...]
    """Probability of each kind in FAULT_KINDS for a new episode."""

    @classmethod
    def derive(cls, node: str, seed: int) -> NodeProfile:
        rng = rng_for(seed, stable_key(node), 0xA0DE)
        return cls(
            node=node,
            ambient_c=float(rng.uniform(14.0, 32.0)),
            rpm_nominal=float(rng.uniform(1150.0, 1850.0)),
            pressure_bar=float(rng.uniform(3.5, 8.5)),
            current_a=float(rng.uniform(18.0, 42.0)),
            vibration_rms=float(rng.uniform(0.9, 2.6)),
            load_level=float(rng.uniform(0.55, 0.95)),
            idle_share=float(rng.uniform(0.1, 0.4)),
            fault_share=float(rng.uniform(0.05, 0.3)),
            fault_weights=tuple(float(w) for w in rng.dirichlet(np.full(len(FAULT_KINDS), 1.5))),
        )


@dataclass(frozen=True)
class Episode:
    """One labelled fault: samples `[start, stop)` of a device's stream."""

    start: int
    stop: int
    kind: int
    """1-based index into FAULT_KINDS."""

    @property
    def name(self) -> str:
        return FAULT_KINDS[self.kind - 1]


@dataclass(frozen=True)
class DeviceProfile:
    """One machine: its node's operating point with a small per-device jitter, a load
    schedule (knots of a piecewise-linear load factor) and its fault episodes."""

    device: str
    node: NodeProfile
    index: int
    scale: tuple[float, ...]
    """Per-channel multiplier around the node's operating point."""
    drift_per_hour: tuple[float, ...]
    """Slow sensor/machine drift, relative to the operating point, per hour."""
    noise: tuple[float, ...]
    """Per-channel noise standard deviation, relative to the operating point."""
    knots_s: np.ndarray
    knots_load: np.ndarray
    episodes: tuple[Episode, ...]
    thermal_tau_s: float
    phase_s: float


def device_id(node: str, index: int) -> str:
    """Default device id: `<node>-m<index>` (e.g. `edge-a-m003`)."""
    return f"{node}-m{index:03d}"


def derive_device(node: NodeProfile, index: int, device: str, seed: int, n_samples: int, rate_hz: float) -> DeviceProfile:
    """The full, deterministic profile of device `index` on `node` for `n_samples` ticks."""
    rng = rng_for(seed, stable_key(node.node), index, 0xDE71)
    seconds = n_samples / rate_hz
    knots_s, knots_load = _load_schedule(rng, node, seconds)
    return DeviceProfile(
        device=device,
        node=node,
        index=index,
        scale=tuple(float(x) for x in rng.normal(1.0, 0.03, 5)),
        drift_per_hour=tuple(float(x) for x in rng.normal(0.0, [0.01, 0.03, 0.005, 0.005, 0.0])),
        noise=(0.006, 0.08, 0.02, 0.04, 0.005),
        knots_s=knots_s,
        knots_load=knots_load,
        episodes=_fault_schedule(rng, node, n_samples, rate_hz),
        thermal_tau_s=float(rng.uniform(60.0, 180.0)),
        phase_s=float(rng.uniform(0.0, 600.0)),
    )


def _load_schedule(rng: np.random.Generator, node: NodeProfile, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Cycles idle -> ramp up -> load -> ramp down, as knots of a piecewise-linear load."""
    times, loads = [0.0], [0.05]
    t = -float(rng.uniform(0.0, 200.0))  # start somewhere inside a cycle
    while t < seconds:
        idle = rng.exponential(240.0 * node.idle_share / 0.25)
        ramp_up, ramp_down = rng.uniform(10.0, 45.0, 2)
        busy = rng.exponential(420.0)
        level = float(np.clip(rng.normal(node.load_level, 0.08), 0.3, 1.0))
        for dt, value in ((idle, 0.05), (ramp_up, level), (busy, level), (ramp_down, 0.05)):
            t += float(dt)
            times.append(t)
            loads.append(value)
    times_arr = np.maximum(np.asarray(times), 0.0)
    # knots before 0 collapse onto 0; keep the last one so interpolation starts mid-cycle
    keep = np.r_[times_arr[1:] > 0.0, True]
    return times_arr[keep], np.asarray(loads)[keep]


def _fault_schedule(rng: np.random.Generator, node: NodeProfile, n_samples: int, rate_hz: float) -> tuple[Episode, ...]:
    """Non-overlapping episodes so that about `fault_share` of the time is faulty."""
    mean_len_s = 90.0
    mean_gap_s = mean_len_s * (1.0 - node.fault_share) / node.fault_share
    episodes: list[Episode] = []
    t = float(rng.exponential(mean_gap_s * 0.5))
    end = n_samples / rate_hz
    while t < end:
        length = float(rng.uniform(30.0, 150.0))
        kind = int(rng.choice(len(FAULT_KINDS), p=np.asarray(node.fault_weights))) + 1
        start, stop = int(t * rate_hz), min(n_samples, int((t + length) * rate_hz))
        if stop > start:
            episodes.append(Episode(start, stop, kind))
        t += length + float(rng.exponential(mean_gap_s))
    return tuple(episodes)
