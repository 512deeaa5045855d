"""MLflow's own tracking server as the local stack runs it, and a wait until it answers.

`ember up` starts `mlflow server` with a SQLite backend store (`$EMBER_HOME/mlflow.sqlite3`)
and served artifacts (`$EMBER_HOME/mlartifacts`), on a loopback port, with one uvicorn worker
and MLflow's background job runner off: the lightest server MLflow offers. Actors then log to
it over HTTP like they would to a deployment's server; nothing but the server writes the store.
After the stack stops, the same store can still be read directly
(`--tracking-uri sqlite:///$EMBER_HOME/mlflow.sqlite3`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def store_paths(home: Path) -> tuple[Path, Path]:
    """(SQLite backend store, artifact folder) of the stack under `home`."""
    return home / "mlflow.sqlite3", home / "mlartifacts"


def available() -> bool:
    """Whether the full `mlflow` (with its server) is installed, not only `mlflow-skinny`."""
    return all(importlib.util.find_spec(name) is not None for name in ("mlflow", "sqlalchemy", "uvicorn", "alembic"))


def server_argv(home: Path, port: int, *, host: str = "127.0.0.1") -> list[str]:
    store, artifacts = store_paths(home)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store}",
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
    ]  # fmt: skip


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: MLflow's background job runner off (Ember runs no MLflow jobs)."""
    return dict(base, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1")


def wait_healthy(url: str, *, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Return once `GET {url}/health` answers 200; raise if `process` exits first or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the MLflow server at {url} did not answer within {timeout:g}s")
