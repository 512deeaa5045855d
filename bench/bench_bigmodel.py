"""A big model (one float32 array, `--mb` MB), 3 learners, FedAvg with evaluation: Ember's MQTT
transport vs Flower's compatibility gRPC API, side by side in one run, per-round wall time.

The learners' work is trivial (train adds 1e-3, evaluate sums): the figures are the transport's.

- Ember: a private Mosquitto, an `MqttGrid` driven by Flower's own `FedAvg.start` (what
  `ember.fl.serverapp` does), and 3 learner processes (`LearnerEndpoint` + a `ClientApp`).
- Flower compat: `flwr.server.start_server` with a legacy `FedAvg`, 3 `start_client` processes
  (`NumPyClient`), gRPC message limit raised to fit the model.

Round time: between the server-side evaluations that close consecutive rounds, the same on both.

    .venv/bin/python -m bench.bench_bigmodel --mb 50 --rounds 3 [--codec none|float16|int8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ember.testing import free_port, private_broker, wait_for_port

NODES = 3
ROOT = Path(__file__).resolve().parents[1]
GRPC_MAX = 2**31 - 1


def model(mb: float) -> list[np.ndarray]:
    return [np.random.default_rng(0).normal(size=int(mb * 1024 * 1024 / 4)).astype(np.float32)]


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Ember ------------------------------------------------------------------------------------
def run_ember(mb: float, rounds: int, codec: str, workdir: Path) -> dict[str, Any]:
    with private_broker() as broker:
        me = [sys.executable, "-m", "bench.bench_bigmodel"]
        procs = [
            _spawn([*me, "ember-learner", "--url", broker.url, "--actor", f"learner-{i}", "--codec", codec], workdir / f"ember-{i}.log")
            for i in range(NODES)
        ]
        try:
            return asyncio.run(_ember_server(broker.url, mb, rounds))
        finally:
            _stop(procs)


async def _ember_server(url: str, mb: float, rounds: int) -> dict[str, Any]:
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from ember.bus import Bus
    from ember.fl import flwr_compat as compat
    from ember.fl.grid import MqttGrid

    actors = [f"learner-{i}" for i in range(NODES)]
    async with Bus(url, client_id="bench-agg") as bus:
        grid = MqttGrid(bus, job="big", learners=actors, minimum=NODES, run_id=1)
        await grid.wait_ready(120)
        marks: list[float] = []

        def evaluate_fn(_round: int, _arrays: ArrayRecord) -> None:
            marks.append(time.perf_counter())

        def drive() -> None:
            compat.set_task_identity(run_id=1, node_id=compat.AGGREGATOR_NODE_ID)
            FedAvg().start(grid=grid, initial_arrays=ArrayRecord(model(mb)), num_rounds=rounds, evaluate_fn=evaluate_fn)

        await asyncio.to_thread(drive)
        await grid.signal_all("done", ok=True)
        seconds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        return {"round_seconds": seconds, "referenced_mb": grid.content.referenced_bytes / 2**20, "stats": dict(grid.stats)}


def ember_learner(url: str, actor: str, codec: str) -> None:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from ember.fl.clientapp import learner_context
    from ember.fl.endpoint import learner_bus
    from ember.fl.grid import node_id_for

    app = ClientApp()

    @app.train()
    def train(message: Message, context: Any) -> Message:
        arrays = [a + np.float32(1e-3) for a in message.content["arrays"].to_numpy_ndarrays()]
        return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 10})}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Any) -> Message:
        total = float(sum(a.sum(dtype=np.float64) for a in message.content["arrays"].to_numpy_ndarrays()))
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10, "total": total})}), reply_to=message)

    async def serve() -> None:
        bus, endpoint = learner_bus(url, root="ember/v1", job="big", actor=actor)
        endpoint.codec = codec
        async with bus:
            await endpoint.run(lambda: (app, learner_context(1, node_id_for(actor), int(actor.rsplit("-", 1)[1]), NODES)))

    asyncio.run(serve())


# --- Flower compat ------------------------------------------------------------------------------
def run_flower(mb: float, rounds: int, workdir: Path) -> dict[str, Any]:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, SimpleClientManager, start_server
    from flwr.server.strategy import FedAvg

    port = free_port()
    marks: dict[int, float] = {}
    clients = SimpleClientManager()

    def central(server_round: int, _ndarrays: list, _config: dict) -> tuple[float, dict[str, float]]:
        if server_round == 0:
            clients.wait_for(NODES, timeout=300)
        marks[server_round] = time.perf_counter()
        return 0.0, {}

    strategy = FedAvg(
        min_fit_clients=NODES, min_evaluate_clients=NODES, min_available_clients=NODES, evaluate_fn=central,
        initial_parameters=ndarrays_to_parameters(model(mb)),
    )
    me = [sys.executable, "-m", "bench.bench_bigmodel"]
    procs: list[subprocess.Popen[bytes]] = []

    def start_clients() -> None:
        wait_for_port("127.0.0.1", port, timeout=60)
        procs.extend(_spawn([*me, "flower-client", "--port", str(port)], workdir / f"flower-{i}.log") for i in range(NODES))

    starter = threading.Thread(target=start_clients)
    starter.start()
    try:
        start_server(server_address=f"127.0.0.1:{port}", config=ServerConfig(num_rounds=rounds), strategy=strategy,
                     client_manager=clients, grpc_max_message_length=GRPC_MAX)
    finally:
        starter.join()
        _stop(procs)
    return {"round_seconds": [marks[r] - marks[r - 1] for r in range(1, rounds + 1)]}


def flower_client(port: int) -> None:
    from flwr.client import NumPyClient, start_client

    class Client(NumPyClient):
        def fit(self, parameters: list, config: dict) -> tuple[list, int, dict]:
            return [p + np.float32(1e-3) for p in parameters], 10, {}

        def evaluate(self, parameters: list, config: dict) -> tuple[float, int, dict]:
            return 0.0, 10, {"total": float(sum(p.sum(dtype=np.float64) for p in parameters))}

    start_client(server_address=f"127.0.0.1:{port}", client=Client().to_client(), insecure=True, grpc_max_message_length=GRPC_MAX)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_bigmodel")
    parser.add_argument("cmd", nargs="?", default="bench", choices=["bench", "ember-learner", "flower-client"])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--codec", default="none")
    parser.add_argument("--url")
    parser.add_argument("--actor")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "ember-learner":
        return ember_learner(args.url, args.actor, args.codec)
    if args.cmd == "flower-client":
        return flower_client(args.port)
    with tempfile.TemporaryDirectory(prefix="bench-bigmodel-") as tmp:
        ember = run_ember(args.mb, args.rounds, args.codec, Path(tmp))
        flower = run_flower(args.mb, args.rounds, Path(tmp))
    print(json.dumps({"mb": args.mb, "rounds": args.rounds, "codec": args.codec, "ember": ember, "flower_compat": flower}, indent=1))


if __name__ == "__main__":
    main()
