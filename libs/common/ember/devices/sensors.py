"""Deterministic simulator of industrial machines (the mock edge devices' sensors).

Each machine reports five channels at a fixed rate: `temperature_c`, `vibration_rms` (mm/s),
`pressure_bar`, `motor_current_a` and `rpm`. A machine cycles idle -> ramp -> load -> ramp
down; the channels follow the load (temperature through a thermal lag), carry Gaussian noise
and a slow drift, and during labelled fault episodes deviate the way real faults do:

- `bearing_wear`: vibration up (and noisier), temperature up;
- `pressure_leak`: pressure down, current slightly up (the pump compensates);
- `overload`: current up, temperature up, rpm slightly down.

Fault effects are relative to the operating point and grow over an episode, so a fault at
idle is subtle: a classifier on windowed features learns them, but not trivially.

A reading (one row) has the columns of `READING_SCHEMA`. `ts` is **int64 nanoseconds since
the Unix epoch (UTC)**; ticks are `start_ts + i / rate_hz` seconds. Output is a pure function
of the arguments: the same `(node, devices, seconds, rate_hz, seed, start_ts)` gives an
identical table however it is split into chunks.

    table = generate_table("edge-a", devices=4, seconds=600, rate_hz=1.0, seed=7)
    for reading in iter_readings("edge-a", 4, 60, 1.0, seed=7): ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.signal import lfilter, lfilter_zi

from ember.devices.profiles import FAULT_KINDS, DeviceProfile, NodeProfile, derive_device, device_id, rng_for, stable_key

CHANNELS: tuple[str, ...] = ("temperature_c", "vibration_rms", "pressure_bar", "motor_current_a", "rpm")
DEFAULT_START_TS = 1_735_689_600_000_000_000
"""2025-01-01T00:00:00Z in ns: the default `start_ts`, so tables are reproducible."""
READING_SCHEMA = pa.schema(
    [("ts", pa.int64()), ("device", pa.string()), ("node", pa.string())]
    + [(name, pa.float64()) for name in CHANNELS]
    + [("fault", pa.int64()), ("fault_kind", pa.string())]
)
_NOISE_BLOCK = 4096
_KIND_NAMES = pa.array(("",) + FAULT_KINDS, pa.string())


class DeviceStream:
    """The sample stream of one machine; `next(n)` returns the next `n` ticks.

    Noise is drawn per fixed block of ticks and the thermal filter carries its state, so
    the values do not depend on how the stream is split into `next` calls.
    """

    def __init__(self, profile: DeviceProfile, n_ticks: int, rate_hz: float, seed: int) -> None:
        self.profile, self.n_ticks, self.rate_hz, self.seed = profile, n_ticks, rate_hz, seed
        self.pos = 0
        alpha = float(np.exp(-1.0 / (rate_hz * profile.thermal_tau_s)))
        self._b, self._a = np.array([1.0 - alpha]), np.array([1.0, -alpha])
        self._zi = lfilter_zi(self._b, self._a) * float(profile.knots_load[0])
        self._noise_cache: tuple[int, np.ndarray] | None = None

    def next(self, n: int) -> dict[str, np.ndarray]:
        """Channels (float64), `fault` (int64 0/1) and `kind` (int8 code) for the next n ticks."""
        i0, i1 = self.pos, min(self.pos + n, self.n_ticks)
        self.pos = i1
        p, node = self.profile, self.profile.node
        t = np.arange(i0, i1, dtype=np.float64) / self.rate_hz
        load = np.interp(t + 0.0, p.knots_s, p.knots_load)
        thermal, self._zi = lfilter(self._b, self._a, load, zi=self._zi)
        noise = self._noise(i0, i1)
        kind, severity = self._faults(i0, i1)
        sc, drift = p.scale, 1.0 + np.outer(t / 3600.0, p.drift_per_hour)

        rpm_nom = node.rpm_nominal * sc[4]
        rpm = rpm_nom * (0.15 + 0.85 * load)
        current = node.current_a * sc[3] * (0.12 + 0.88 * load**1.2)
        pressure = node.pressure_bar * sc[2] * (0.3 + 0.7 * load)
        vibration = node.vibration_rms * sc[1] * (0.25 + 0.75 * (rpm / rpm_nom) ** 2)
        daily = 2.0 * np.sin(2 * np.pi * (t + p.phase_s) / 86_400.0)
        temperature = node.ambient_c + daily + 35.0 * sc[0] * thermal

        bearing, leak, over = (np.where(kind == k, severity, 0.0) for k in (1, 2, 3))
        vibration = vibration * (1.0 + 0.8 * bearing)
        temperature = temperature + 5.0 * bearing + 3.0 * over
        pressure = pressure * (1.0 - 0.22 * leak)
        current = current * (1.0 + 0.06 * leak + 0.28 * over)
        rpm = rpm * (1.0 - 0.04 * over)

        scale_abs = np.array([35.0, node.vibration_rms, node.pressure_bar, node.current_a, node.rpm_nominal])
        sigma = scale_abs * np.asarray(p.noise)
        noisy = np.stack([temperature, vibration, pressure, current, rpm], axis=1) * drift
        noisy[:, 1] += noise[:, 1] * sigma[1] * (1.0 + 1.5 * bearing)
        noisy[:, [0, 2, 3, 4]] += noise[:, [0, 2, 3, 4]] * sigma[[0, 2, 3, 4]]
        noisy[:, 1:] = np.maximum(noisy[:, 1:], 0.0)
        out = {name: np.ascontiguousarray(noisy[:, j]) for j, name in enumerate(CHANNELS)}
        out["fault"] = (kind > 0).astype(np.int64)
        out["kind"] = kind
        return out

    def _noise(self, i0: int, i1: int) -> np.ndarray:
        blocks = []
        for b in range(i0 // _NOISE_BLOCK, (max(i1, i0 + 1) - 1) // _NOISE_BLOCK + 1):
            if self._noise_cache is None or self._noise_cache[0] != b:
                rng = rng_for(self.seed, stable_key(self.profile.node.node), self.profile.index, b, 0x501)
                self._noise_cache = (b, rng.standard_normal((_NOISE_BLOCK, len(CHANNELS))))
            blocks.append(self._noise_cache[1])
        start = i0 - (i0 // _NOISE_BLOCK) * _NOISE_BLOCK
        return np.concatenate(blocks)[start : start + (i1 - i0)]

    def _faults(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray]:
        kind = np.zeros(i1 - i0, np.int8)
        severity = np.zeros(i1 - i0)
        for ep in self.profile.episodes:
            lo, hi = max(ep.start, i0), min(ep.stop, i1)
            if lo >= hi:
                continue
            kind[lo - i0 : hi - i0] = ep.kind
            progress = (np.arange(lo, hi) - ep.start) / max(1, ep.stop - ep.start)
            severity[lo - i0 : hi - i0] = 0.35 + 0.65 * progress
        return kind, severity


class Fleet:
    """All machines of one node, producing time-major tables (tick by tick, devices
    interleaved in a fixed order)."""

    def __init__(
        self,
        node: str,
        devices: int | Sequence[str],
        seconds: float,
        rate_hz: float = 1.0,
        seed: int = 0,
        start_ts: int = DEFAULT_START_TS,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        names = [device_id(node, i) for i in range(devices)] if isinstance(devices, int) else list(devices)
        if not names:
            raise ValueError("a fleet needs at least one device")
        self.node, self.rate_hz, self.start_ts = node, float(rate_hz), int(start_ts)
        self.n_ticks = int(round(seconds * rate_hz))
        self.pos = 0
        profile = NodeProfile.derive(node, seed)
        self.devices = tuple(names)
        self.streams = [
            DeviceStream(derive_device(profile, i, name, seed, self.n_ticks, self.rate_hz), self.n_ticks, self.rate_hz, seed)
            for i, name in enumerate(names)
        ]

    @property
    def remaining(self) -> int:
        """Ticks not yet produced."""
        return self.n_ticks - self.pos

    def timestamps(self, i0: int, i1: int) -> np.ndarray:
        return self.start_ts + np.rint(np.arange(i0, i1, dtype=np.float64) * (1e9 / self.rate_hz)).astype(np.int64)

    def next_table(self, ticks: int) -> pa.Table:
        """The next `ticks` ticks of every device as a table of `ticks * len(devices)` rows."""
        i0, i1 = self.pos, min(self.pos + ticks, self.n_ticks)
        self.pos = i1
        parts = [s.next(i1 - i0) for s in self.streams]
        n_dev, n = len(parts), i1 - i0

        def interleave(key: str) -> np.ndarray:
            return np.stack([part[key] for part in parts], axis=1).ravel()

        columns: dict[str, Any] = {
            "ts": np.repeat(self.timestamps(i0, i1), n_dev),
            "device": pa.array(self.devices, pa.string()).take(pa.array(np.tile(np.arange(n_dev), n))),
            "node": pa.array([self.node], pa.string()).take(pa.array(np.zeros(n * n_dev, np.int32))),
        }
        columns.update({name: interleave(name) for name in CHANNELS})
        columns["fault"] = interleave("fault")
        columns["fault_kind"] = pc.take(_KIND_NAMES, pa.array(interleave("kind")))
        return pa.Table.from_pydict(columns, schema=READING_SCHEMA)

    def tables(self, ticks_per_table: int) -> Iterator[pa.Table]:
        """Consume the rest of the fleet's time in tables of `ticks_per_table` ticks."""
        while self.remaining > 0:
            yield self.next_table(ticks_per_table)


def generate_table(
    node: str,
    devices: int | Sequence[str] = 4,
    seconds: float = 600.0,
    rate_hz: float = 1.0,
    seed: int = 0,
    start_ts: int = DEFAULT_START_TS,
) -> pa.Table:
    """`round(seconds * rate_hz) * devices` readings of one node's machines, vectorised.

    `devices` is a count (ids `<node>-m000`, ...) or explicit ids. Rows are ordered by tick,
    then by device. Same arguments, same table.
    """
    fleet = Fleet(node, devices, seconds, rate_hz, seed, start_ts)
    return fleet.next_table(fleet.n_ticks)


def readings_of(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a readings table as plain JSON-ready dicts (fast path over `to_pylist`)."""
    columns = {name: table.column(name).to_numpy(zero_copy_only=False).tolist() for name in table.column_names}
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def iter_readings(
    node: str,
    devices: int | Sequence[str] = 4,
    seconds: float = 600.0,
    rate_hz: float = 1.0,
    seed: int = 0,
    start_ts: int = DEFAULT_START_TS,
    chunk_ticks: int = 1024,
) -> Iterator[dict[str, Any]]:
    """The same readings as `generate_table`, one dict at a time, in the same order."""
    for table in Fleet(node, devices, seconds, rate_hz, seed, start_ts).tables(chunk_ticks):
        yield from readings_of(table)
