"""One Flower app (`examples/flower-app`, unchanged) run by three engines; a helper of `bench_fl`.

- `run_deployment`: Flower's Deployment Engine, all local and insecure: `flower-superlink`,
  three `flower-supernode`s (`--node-config "partition-id=i num-partitions=3"`) and
  `flwr run <app> bench --stream` against a SuperLink connection in a private `FLWR_HOME`.
- `run_compat`: Flower's compatibility gRPC API (`flwr.server.start_server` /
  `flwr.client.start_client`, deprecated in 1.41 but present): the same `flowerdigits.task`
  model and split behind a legacy `FedAvg` and a `NumPyClient`, one OS process each.
- `run_ember`: Ember's local stack (`ember.stack.Stack`: Mosquitto, control plane, 3 flamelets)
  and the app's `job.yaml` submitted to the manager.

Each returns the app's own summary (`FLOWERDIGITS_RESULT`, measured inside the ServerApp the same
way everywhere): per-round wall time between the server-side evaluations that close each round,
the slowest learner's train and evaluate compute per round, and the final accuracies.

`python -m bench.bench_fl_engines compat-server|compat-client ...` are the compat API's processes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ember.testing import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "examples" / "flower-app"
BIN = Path(sys.executable).parent
NODES = 3
RUN_ALL = False  # a helper: `bench.run_all` runs `bench_fl`, which calls this module


def prepare_app(workdir: Path, rounds: int | None) -> Path:
    """The app folder to run: the example itself, or a copy whose pyproject sets `rounds`."""
    if rounds is None:
        return APP_DIR
    app = workdir / "flower-app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    pyproject = app / "pyproject.toml"
    pyproject.write_text(re.sub(r"(?m)^num-server-rounds = \d+$", f"num-server-rounds = {rounds}", pyproject.read_text()))
    job = app / "job.yaml"
    job.write_text(re.sub(r"(?m)^  rounds: \d+$", f"  rounds: {rounds}", job.read_text()))
    return app


def app_config(app: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_summary(path: Path, what: str, logs: list[Path]) -> dict[str, Any]:
    if not path.is_file():
        tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in logs if p.exists())
        raise RuntimeError(f"{what}: the ServerApp wrote no result\n{tails}")
    return json.loads(path.read_text())


# --- Flower's Deployment Engine ---------------------------------------------------------------
def run_deployment(workdir: Path, rounds: int | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    app = prepare_app(workdir, rounds)
    home, result = workdir / "flwr-home", workdir / "deployment-result.json"
    home.mkdir(exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = _env(FLWR_HOME=str(home), FLOWERDIGITS_RESULT_FILE=str(result))
    procs: list[subprocess.Popen[bytes]] = []
    logs = [workdir / "superlink.log", *(workdir / f"supernode-{i}.log" for i in range(NODES)), workdir / "flwr-run.log"]
    try:
        procs.append(_spawn(["flower-superlink", "--insecure", "--port", str(port), "--database", str(workdir / "superlink.db")], env, logs[0]))
        wait_for_port("127.0.0.1", port, timeout=60, process=procs[0])
        for i in range(NODES):
            argv = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                    "--node-config", f"partition-id={i} num-partitions={NODES}"]
            procs.append(_spawn(argv, env, logs[1 + i]))
        started = time.perf_counter()
        with open(logs[-1], "wb") as out:
            run = subprocess.run(["flwr", "run", str(app), "bench", "--stream"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        total = time.perf_counter() - started
        if run.returncode != 0:
            raise RuntimeError(f"flwr run exited with {run.returncode}; see {logs[-1]}")
        summary = _read_summary(result, "deployment engine", logs)
        summary["submit_to_end_s"] = total
        return summary
    finally:
        _stop(procs)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(log.parent))


# --- Flower's compatibility gRPC API ------------------------------------------------------------
def run_compat(workdir: Path, rounds: int | None = None, timeout: float = 900.0) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    app = prepare_app(workdir, rounds)
    result, port = workdir / "compat-result.json", free_port()
    env = _env(PYTHONPATH=os.pathsep.join([str(ROOT), str(app)]))
    me = [sys.executable, "-m", "bench.bench_fl_engines"]
    logs = [workdir / "compat-server.log", *(workdir / f"compat-client-{i}.log" for i in range(NODES))]
    procs = [_spawn([*me, "compat-server", "--app", str(app), "--port", str(port), "--out", str(result)], env, logs[0])]
    try:
        wait_for_port("127.0.0.1", port, timeout=60, process=procs[0])
        started = time.perf_counter()
        for i in range(NODES):
            procs.append(_spawn([*me, "compat-client", "--app", str(app), "--port", str(port), "--pid", str(i)], env, logs[1 + i]))
        procs[0].wait(timeout)
        summary = _read_summary(result, "compatibility API", logs)
        summary["submit_to_end_s"] = time.perf_counter() - started
        return summary
    finally:
        _stop(procs)


def _aggregate(pairs: list[tuple[int, dict[str, Any]]]) -> dict[str, float]:
    """Legacy metrics aggregation: example-weighted means; times are the slowest node's."""
    total = sum(n for n, _ in pairs) or 1
    out: dict[str, float] = {}
    for key in pairs[0][1]:
        values = [float(m[key]) for _, m in pairs]
        out[key] = max(values) if key in ("compute_s", "load_s") else sum(n * v for (n, _), v in zip(pairs, values, strict=True)) / total
    return out


def compat_server(app: Path, port: int, out: Path) -> None:
    sys.path.insert(0, str(app))
    from flowerdigits import task  # noqa: PLC0415
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, SimpleClientManager, start_server
    from flwr.server.strategy import FedAvg

    cfg = app_config(app)
    rounds, seed = int(cfg["num-server-rounds"]), int(cfg["seed"])
    x_holdout, y_holdout = task.load_holdout(seed)
    marks: dict[int, float] = {}
    clients = SimpleClientManager()

    def central(server_round: int, ndarrays: list, _config: dict) -> tuple[float, dict[str, float]]:
        if server_round == 0:  # as on the other engines, rounds start once every learner is there
            clients.wait_for(NODES, timeout=300)
        marks[server_round] = time.perf_counter()
        loss, accuracy = task.evaluate(ndarrays, x_holdout, y_holdout)
        return loss, {"holdout_accuracy": accuracy}

    strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=NODES, min_evaluate_clients=NODES, min_available_clients=NODES,
        evaluate_fn=central, on_fit_config_fn=lambda r: {"server-round": r}, on_evaluate_config_fn=lambda r: {"server-round": r},
        initial_parameters=ndarrays_to_parameters(task.initial_parameters()),
        fit_metrics_aggregation_fn=_aggregate, evaluate_metrics_aggregation_fn=_aggregate,
    )
    hist = start_server(server_address=f"127.0.0.1:{port}", config=ServerConfig(num_rounds=rounds), strategy=strategy,
                        client_manager=clients)
    fit, dist = hist.metrics_distributed_fit, hist.metrics_distributed
    series = lambda m, k: [float(v) for _, v in sorted(m.get(k, []))]  # noqa: E731
    summary = {
        "rounds": rounds,
        "holdout_accuracy": float(sorted(hist.metrics_centralized["holdout_accuracy"])[-1][1]),
        "federated_accuracy": series(dist, "accuracy")[-1],
        "round_seconds": [marks[r] - marks[r - 1] for r in range(1, rounds + 1)],
        "train_compute_s": series(fit, "compute_s"),
        "evaluate_compute_s": series(dist, "compute_s"),
        "load_s": [a + b for a, b in zip(series(fit, "load_s"), series(dist, "load_s"), strict=True)],
    }
    print("FLOWERDIGITS_RESULT " + json.dumps(summary), flush=True)
    out.write_text(json.dumps(summary))


def compat_client(app: Path, port: int, pid: int) -> None:
    sys.path.insert(0, str(app))
    from flowerdigits import task  # noqa: PLC0415
    from flwr.client import NumPyClient, start_client

    cfg = app_config(app)
    seed = int(cfg["seed"])

    class DigitsClient(NumPyClient):
        def _data(self) -> tuple[tuple, float]:
            loaded = time.perf_counter()
            data = task.load_partition(pid, NODES, float(cfg["alpha"]), seed)
            return data, time.perf_counter() - loaded

        def fit(self, parameters: list, config: dict) -> tuple[list, int, dict[str, float]]:
            (x, y, _, _), load_s = self._data()
            started = time.perf_counter()
            params = task.train(parameters, x, y, epochs=int(cfg["local-epochs"]), lr=float(cfg["learning-rate"]),
                                batch_size=int(cfg["batch-size"]), seed=[seed, int(config["server-round"]), pid])
            loss, accuracy = task.evaluate(params, x, y)
            return params, len(y), {"train_loss": loss, "train_accuracy": accuracy,
                                    "compute_s": time.perf_counter() - started, "load_s": load_s}

        def evaluate(self, parameters: list, config: dict) -> tuple[float, int, dict[str, float]]:
            (_, _, x, y), load_s = self._data()
            started = time.perf_counter()
            loss, accuracy = task.evaluate(parameters, x, y)
            return loss, len(y), {"accuracy": accuracy, "compute_s": time.perf_counter() - started, "load_s": load_s}

    start_client(server_address=f"127.0.0.1:{port}", client=DigitsClient().to_client(), insecure=True)


# --- Ember --------------------------------------------------------------------------------------
def run_ember(workdir: Path, rounds: int | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """The app's job.yaml on a fresh local stack (3 flamelets); returns the app's summary."""
    from ember.jobspec import load_spec_file
    from ember.stack import Stack

    workdir.mkdir(parents=True, exist_ok=True)
    app = prepare_app(workdir, rounds)
    result = workdir / "ember-result.json"
    env = _env(FLOWERDIGITS_RESULT_FILE=str(result), EMBER_LOG_LEVEL="warning")
    with Stack(workdir / "ember-home", flamelets=NODES, env=env) as stack:
        spec = load_spec_file(app / "job.yaml")
        started = time.perf_counter()
        job = asyncio.run(submit_and_wait(stack.url, spec, app, timeout))
        total = time.perf_counter() - started
        if job["state"] != "succeeded":
            raise RuntimeError(f"ember job {job['job']} {job['state']}: {job.get('reason')}")
        summary = _read_summary(result, "ember", [stack.log_path(n) for n in stack.procs])
    summary["submit_to_end_s"] = total
    summary["ember_rounds"] = job.get("rounds", [])
    return summary


async def submit_and_wait(url: str, spec: dict[str, Any], spec_dir: Path, timeout: float) -> dict[str, Any]:
    """Submit a spec to the manager and wait (quietly) until the job ends; its summary."""
    from rich.console import Console

    from ember.bundle_bus import submit_job
    from ember.bus import Bus
    from ember.cli.watch import follow_job

    async with Bus(url, source="bench") as bus:
        reply = await submit_job(bus, spec, spec_dir)
        return await follow_job(bus, reply["job"], Console(file=io.StringIO()), timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fl_engines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    server = sub.add_parser("compat-server")
    server.add_argument("--out", type=Path, required=True)
    client = sub.add_parser("compat-client")
    client.add_argument("--pid", type=int, required=True)
    for p in (server, client):
        p.add_argument("--app", type=Path, default=APP_DIR)
        p.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "compat-server":
        compat_server(args.app, args.port, args.out)
    else:
        compat_client(args.app, args.port, args.pid)


if __name__ == "__main__":
    main()
