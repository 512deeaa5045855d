"""Per-round checkpoints of an aggregator: what a new aggregator needs to continue a job.

A `Checkpoint` holds the round number, the global model, the strategy's state between rounds
(`strategy_state`), the metrics history and the state of Python's `random` (Flower samples
learners with it). `encode` writes it as one `.npz` (no pickle: `allow_pickle=False` at load);
its name carries the round and the sha256 of its bytes (`round-000012-<sha256>.ckpt`), and
`latest` loads the newest whose bytes still hash to its name, so a torn or altered file is
skipped for the one before it.

Storage is a small seam (`CheckpointStore`): `LocalStore` (a folder; temp file, fsync, rename,
fsync of the folder) and `MlflowStore` (the job's MLflow run, artifact path `checkpoints/`).
`CheckpointWriter` writes in its own thread, off the round's critical path: `submit` replaces
the checkpoint waiting to be written, so rounds faster than writes are coalesced (only the
newest is written); it starts a write at most every `interval` seconds (a store write costs
more CPU than a small model's round; `flush` writes the newest at once), and after each write
it keeps the newest `keep` and reports `(round, digest)`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ember.log import get_logger

log = get_logger("ember.fl.checkpoint")

NAME = re.compile(r"^round-(\d{6,})-([0-9a-f]{64})\.ckpt$")
FORMAT = 1

# Strategy attributes that carry state from one round to the next (flwr 1.41's
# flwr.serverapp.strategy): FedOpt's moments (FedAdam, FedYogi, FedAdagrad) and FedAvgM's
# momentum. `current_arrays` is not state: both set it from the round's arrays in
# `configure_train`.
STATE_ATTRS = ("m_t", "v_t", "momentum_vector")
# Strategies whose whole state between rounds is in STATE_ATTRS (or that have none).
RESTORABLE = frozenset(
    {"FedAvg", "FedProx", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM"}
)


@dataclass
class Checkpoint:
    round: int
    parameters: list[np.ndarray]
    strategy: dict[str, Any] = field(default_factory=dict)
    """Attribute name -> a dict of arrays or a list of arrays (see `STATE_ATTRS`)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every round so far as `RoundCompleted` data."""
    rng: Any = None
    """`random.getstate()` as JSON (lists for tuples)."""
    strategy_name: str = ""


def name_of(round_number: int, digest: str) -> str:
    return f"round-{round_number:06d}-{digest}.ckpt"


def encode(checkpoint: Checkpoint) -> tuple[bytes, str]:
    """The checkpoint's bytes and their sha256."""
    arrays: dict[str, np.ndarray] = {f"p/{i}": np.asarray(a) for i, a in enumerate(checkpoint.parameters)}
    layout: dict[str, Any] = {}
    for attr, value in checkpoint.strategy.items():
        if isinstance(value, dict):
            layout[attr] = {"keys": list(value)}
            arrays.update({f"s/{attr}/{i}": np.asarray(v) for i, v in enumerate(value.values())})
        else:
            layout[attr] = {"count": len(value)}
            arrays.update({f"s/{attr}/{i}": np.asarray(v) for i, v in enumerate(value)})
    meta = {
        "format": FORMAT,
        "round": checkpoint.round,
        "parameters": len(checkpoint.parameters),
        "strategy": layout,
        "strategy_name": checkpoint.strategy_name,
        "history": checkpoint.history,
        "rng": checkpoint.rng,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> Checkpoint:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT}")
        strategy: dict[str, Any] = {}
        for attr, shape in meta["strategy"].items():
            if "keys" in shape:
                strategy[attr] = {k: npz[f"s/{attr}/{i}"] for i, k in enumerate(shape["keys"])}
            else:
                strategy[attr] = [npz[f"s/{attr}/{i}"] for i in range(shape["count"])]
        return Checkpoint(
            round=meta["round"],
            parameters=[npz[f"p/{i}"] for i in range(meta["parameters"])],
            strategy=strategy,
            history=meta["history"],
            rng=meta["rng"],
            strategy_name=meta.get("strategy_name", ""),
        )


# --- strategy state ------------------------------------------------------------------------------
def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's state between rounds. The values are referenced, not copied: flwr's
    strategies assign new dicts/lists to these attributes every round instead of changing them."""
    out: dict[str, Any] = {}
    for attr in STATE_ATTRS:
        value = getattr(strategy, attr, None)
        if isinstance(value, dict):
            out[attr] = dict(value)
        elif isinstance(value, list):
            out[attr] = list(value)
    return out


def restore_strategy(strategy: Any, state: dict[str, Any]) -> str | None:
    """Set the saved state on a fresh strategy; returns a warning when its state cannot be fully
    restored (a strategy Ember does not know the state of restarts it)."""
    for attr, value in state.items():
        setattr(strategy, attr, value)
    name = type(strategy).__name__
    if name not in RESTORABLE:
        return f"{name} keeps state Ember does not checkpoint; it restarts from the strategy's defaults"
    return None


def rng_to_json(state: Any) -> Any:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_from_json(value: Any) -> Any:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


# --- storage -------------------------------------------------------------------------------------
class CheckpointStore(Protocol):
    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def names(self) -> list[str]: ...
    def delete(self, name: str) -> None: ...


class LocalStore:
    """Checkpoints as files in one folder, each written whole or not at all."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def put(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.folder / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return [p.name for p in self.folder.iterdir() if NAME.match(p.name)]

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


class MlflowStore:
    """Checkpoints as artifacts of the job's MLflow run (`checkpoints/<name>`): with a tracking
    server, they live where the server keeps artifacts, not on the aggregator's node."""

    PATH = "checkpoints"

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri=uri), run_id

    def _repo(self) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri)

    def put(self, name: str, data: bytes) -> None:
        # The artifact repository copies a local file; the temp folder holds it under its name.
        with tempfile.TemporaryDirectory(prefix="ember-ckpt-") as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path=self.PATH)

    def get(self, name: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="ember-ckpt-") as folder:
            path = self.client.download_artifacts(self.run_id, f"{self.PATH}/{name}", folder)
            return Path(path).read_bytes()

    def names(self) -> list[str]:
        return [Path(f.path).name for f in self.client.list_artifacts(self.run_id, self.PATH) if NAME.match(Path(f.path).name)]

    def delete(self, name: str) -> None:
        self._repo().delete_artifacts(f"{self.PATH}/{name}")


def ordered(names: list[str]) -> list[tuple[int, str, str]]:
    """(round, digest, name) of the checkpoint names, newest first."""
    out = []
    for name in names:
        match = NAME.match(name)
        if match:
            out.append((int(match.group(1)), match.group(2), name))
    return sorted(out, reverse=True)


def latest(store: CheckpointStore) -> tuple[Checkpoint, str] | None:
    """The newest checkpoint whose bytes hash to the digest in its name, and that digest."""
    for round_number, digest, name in ordered(store.names()):
        try:
            data = store.get(name)
            if hashlib.sha256(data).hexdigest() != digest:
                log.warning("checkpoint.corrupt", round=round_number, name=name, reason="digest mismatch")
                continue
            return decode(data), digest
        except Exception as exc:
            log.warning("checkpoint.unreadable", round=round_number, name=name, error=f"{type(exc).__name__}: {exc}"[:300])
    return None


class CheckpointWriter:
    """Writes checkpoints in one background thread, coalescing, keeping the newest `keep`."""

    def __init__(
        self, store: CheckpointStore, *, keep: int, interval: float = 0.0, on_saved: Callable[[int, str], None] | None = None
    ) -> None:
        self.store, self.keep, self.interval, self.on_saved = store, max(1, keep), interval, on_saved
        self.saved: list[tuple[int, str]] = []
        self._pending: Checkpoint | None = None
        self._busy = False
        self._hurry = 0
        self._closed = False
        self._started_at = -float("inf")
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="ember-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: Checkpoint) -> None:
        """Queue `checkpoint`, replacing one not yet being written."""
        with self._cond:
            self._pending = checkpoint
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Write the pending checkpoint now and wait for it; False on timeout."""
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
            finally:
                self._hurry -= 1

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                while not self._hurry and (delay := self._started_at + self.interval - time.monotonic()) > 0:
                    self._cond.wait(delay)  # newer rounds may replace the pending one meanwhile
                checkpoint, self._pending, self._busy = self._pending, None, True
                self._started_at = time.monotonic()
            try:
                self._write(checkpoint)
            except Exception as exc:
                log.warning("checkpoint.write_failed", round=checkpoint.round, error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, checkpoint: Checkpoint) -> None:
        data, digest = encode(checkpoint)
        self.store.put(name_of(checkpoint.round, digest), data)
        self.saved.append((checkpoint.round, digest))
        log.info("checkpoint.saved", round=checkpoint.round, digest=digest, size=len(data))
        if self.on_saved is not None:
            self.on_saved(checkpoint.round, digest)
        for _round, _digest, name in ordered(self.store.names())[self.keep :]:
            self.store.delete(name)
