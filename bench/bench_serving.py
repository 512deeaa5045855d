"""Serving latency and throughput: one serving actor (`ember model serve`) of a tiny
scikit-learn model on a local 1-node stack.

- HTTP: `REQUESTS` sequential `POST /invocations` of one row each (p50/p99 round trip);
- MQTT: `REQUESTS` sequential readings, each published on `data/{tag}` and timed until its
  prediction arrives on `nodes/{node}/predictions/{model}` (p50/p99);
- MQTT throughput: `BATCHES` device batches of `BATCH` readings published at once, timed until
  every prediction arrived (readings scored per second).

    python -m bench.bench_serving [REQUESTS]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ember import topics
from ember.bus import Bus, Message
from ember.devices.publish import readings_envelope
from ember.envelope import decode
from ember.fl.tracking import artifact_root
from ember.stack import Stack
from ember.testing import wait_until

MODEL, TAG, NODE = "bench-model", "bench-line", "node-1"
FEATURES = ["temperature", "vibration", "pressure"]
BATCH, BATCHES = 100, 50


def register(uri: str) -> None:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(200, 3)), columns=FEATURES)
    model = LogisticRegression().fit(frame, (frame["temperature"] > 0).astype(int))
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench-serving", artifact_location=artifact_root(uri))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(frame, model.predict(frame)), registered_model_name=MODEL)


def served_url(stack: Stack) -> str:
    async def ask() -> str:
        async with Bus(stack.url) as bus:
            await bus.request("models.serve", {"model": MODEL, "nodes": [NODE], "tag": TAG})

            async def url() -> str:
                nodes = {n["node"]: n for n in await bus.request("nodes.list", {})}
                return next((a.get("url", "") for a in nodes[NODE]["actors"] if a["role"] == "server" and a["state"] == "running"), "")

            deadline = time.monotonic() + 120
            while not (found := await url()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the serving actor never reported a URL")
                await asyncio.sleep(0.2)
            return found

    return asyncio.run(ask())


def reading(i: int) -> dict[str, Any]:
    return {"device": "dev-1", "seq": i, "temperature": (i % 7) - 3.0, "vibration": 0.1 * i % 1, "pressure": 1.0}


def http_latencies(url: str, count: int) -> list[float]:
    out = []
    for i in range(count):
        body = json.dumps({"dataframe_records": [{k: reading(i)[k] for k in FEATURES}]}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            json.loads(response.read())
        out.append(time.perf_counter() - began)
    return out


async def mqtt_runs(stack: Stack, count: int) -> tuple[list[float], float]:
    arrived: dict[int, float] = {}
    waiting: dict[int, asyncio.Future[None]] = {}
    want = {"n": 0}
    done = asyncio.Event()

    async def on_prediction(message: Message) -> None:
        seq = decode(message.payload).data["reading"]["seq"]
        arrived[seq] = time.perf_counter()
        future = waiting.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(None)
        if len(arrived) >= want["n"]:
            done.set()

    bus = Bus(stack.url)
    bus.subscribe(topics.PREDICTIONS, on_prediction, raw=True, node=NODE, model=MODEL)
    topic = topics.DATA.format(bus.root, tag=TAG)
    latencies = []
    async with bus:
        for i in range(count):
            future = asyncio.get_running_loop().create_future()
            waiting[i] = future
            want["n"] = i + 1
            began = time.perf_counter()
            await bus.publish(topic, readings_envelope("dev-1", TAG, [reading(i)]))
            await asyncio.wait_for(future, 30)
            latencies.append(time.perf_counter() - began)
        arrived.clear()
        done.clear()
        want["n"] = BATCH * BATCHES
        began = time.perf_counter()
        for b in range(BATCHES):
            batch = [reading(count + b * BATCH + j) for j in range(BATCH)]
            await bus.publish(topic, readings_envelope("dev-1", TAG, batch))
        await asyncio.wait_for(done.wait(), 300)
        rate = want["n"] / (time.perf_counter() - began)
    return latencies, rate


def quantiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    count = int(args[0]) if args else 1000
    with tempfile.TemporaryDirectory(prefix="ember-bench-serving-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
        env.update(EMBER_HOME=str(home), EMBER_LOG_LEVEL="warning")
        with Stack(home, flamelets=1, env=env, grace=10) as stack:
            register(f"sqlite:///{home / 'mlflow.sqlite3'}")
            url = served_url(stack)
            wait_until(lambda: http_latencies(url, 1), timeout=30)
            http = http_latencies(url, count)
            mqtt, rate = asyncio.run(mqtt_runs(stack, count))
    print(f"serving, {count} sequential requests of one row, 1 node:")
    print(f"  HTTP POST /invocations: {quantiles(http)}")
    print(f"  MQTT reading -> prediction: {quantiles(mqtt)}")
    print(f"  MQTT throughput: {rate:.0f} readings/s ({BATCHES} batches of {BATCH} readings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
