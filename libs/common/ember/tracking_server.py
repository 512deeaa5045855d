"""MLflow's own tracking server as the local stack runs it, and a wait until it answers.

`ember up` starts `mlflow server` with a SQLite backend store (`$EMBER_HOME/mlflow.sqlite3`)
and served artifacts (`$EMBER_HOME/mlartifacts`), on a loopback port, with one uvicorn worker
and MLflow's background job runner off: the lightest server MLflow offers. Actors then log to
it over HTTP like they would to a deployment's server; nothing but the server writes the store.
After the stack stops, the same store can still be read directly
(`--tracking-uri sqlite:///$EMBER_HOME/mlflow.sqlite3`).

The stack runs `python -m ember.tracking_server --home H --port P`: it makes the store ready, then
becomes `mlflow server` (exec, same process). A new store is created under a temporary name and
renamed once its schema is complete, so a server killed while creating it (its migrations take
seconds) leaves nothing half-made that a restart would refuse; an existing store is upgraded to
the installed MLflow's schema (`mlflow db upgrade`), which MLflow's server does not do itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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
    """The stack's command line: this module, which prepares the store and becomes the server."""
    return [sys.executable, "-m", "ember.tracking_server", "--home", str(home), "--port", str(port), "--host", host]


def mlflow_server_argv(home: Path, port: int, *, host: str = "127.0.0.1") -> list[str]:
    store, artifacts = store_paths(home)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store}",
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
    ]  # fmt: skip


def prepare_store(home: Path) -> None:
    """Create the store (complete, then renamed into place) or upgrade the existing one."""
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

    store, _ = store_paths(home)
    if store.exists():
        engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{store}")  # type: ignore[no-untyped-call]
        try:
            _upgrade_db(engine)  # type: ignore[no-untyped-call]  # `mlflow db upgrade`; nothing when current
        finally:
            engine.dispose()
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    partial = store.with_name(store.name + ".new")
    partial.unlink(missing_ok=True)
    # the Default experiment's artifacts go through the server, as when `mlflow server --serve-artifacts` creates the store
    created = SqlAlchemyStore(f"sqlite:///{partial}", "mlflow-artifacts:/")  # type: ignore[no-untyped-call]
    created.engine.dispose()
    os.replace(partial, store)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ember.tracking_server", description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="EMBER_HOME: the store and artifacts live here")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    prepare_store(args.home)
    command = mlflow_server_argv(args.home, args.port, host=args.host)
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
