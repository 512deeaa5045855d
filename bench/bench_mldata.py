"""Data-plane benchmarks, each side by side with its reference in one run.

    .venv/bin/python bench/bench_mldata.py [--rows 1000000] [--repeat 5] [--readings 200000]

1. `do_put` of a table to a real mldata process vs `pyarrow.parquet.write_table` of the same
   table to a local file, with write_table's defaults (snappy) and with mldata's codec
   (`none`, the default of EMBER_MLDATA_COMPRESSION);                          goal >= 0.7x
2. loader (`load_table`: list + parallel `do_get` + merge) vs reading the same Parquet files
   locally with `pq.read_table` + `concat_tables`, both without sorting;         goal >= 0.8x
   once with mldata's serving copies written (the steady state: data arrives, learners read
   it later) and once with them off (`EMBER_MLDATA_SERVING_COPIES=false`: Parquet decoded
   while streaming);
3. MQTT ingestion: readings/s from the first publish until the mldata process reports every
   reading flushed into partitions (batched messages, pre-serialised);          goal >= 50,000/s

mldata runs as its own process (`python -m ember.mldata`), as in production; the Mosquitto is
private. Times are medians over `--repeat` alternating runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ember.devices.publish import readings_envelope
from ember.devices.sensors import generate_table, readings_of
from ember.data.client import MldataClient, load_table
from ember.testing import free_port, private_broker, wait_for_port, wait_until

TOKEN = "bench-token"
COMPRESSION = "none"  # mldata's default codec (EMBER_MLDATA_COMPRESSION)


def sensor_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = 1_735_689_600_000_000_000 + np.arange(rows, dtype=np.int64) * 1_000_000
    table = {"ts": ts, "device": pa.array(rng.integers(0, 50, rows).astype(str))}
    for name in ("temperature_c", "vibration_rms", "pressure_bar", "motor_current_a", "rpm"):
        table[name] = rng.normal(50, 5, rows)
    table["fault"] = rng.integers(0, 2, rows)
    return pa.table(table)


def start_mldata(
    data: Path, port: int, *, mqtt_url: str | None = None, flush_rows: int = 50_000, serving: bool = True
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ember.mldata", "--port", str(port), "--host", "127.0.0.1", "--data-dir", str(data)]
    cmd += ["--token", TOKEN, "--node", "bench", "--flush-rows", str(flush_rows), "--flush-seconds", "30"]
    cmd += ["--mqtt-url", mqtt_url] if mqtt_url else ["--no-ingest"]
    env = {**os.environ, "EMBER_HOME": str(data.parent / "home"), "EMBER_LOG_LEVEL": "warning"}
    env["EMBER_MLDATA_SERVING_COPIES"] = "true" if serving else "false"
    proc = subprocess.Popen(cmd, env=env)
    wait_for_port("127.0.0.1", port, timeout=30, process=proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def median_time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_put(work: Path, rows: int, repeat: int) -> dict[str, float]:
    port = free_port()
    proc = start_mldata(work / "put", port)
    ours, ref, ref_same = [], [], []
    try:
        with MldataClient(f"grpc://127.0.0.1:{port}", TOKEN) as client:
            for i in range(repeat):
                table = sensor_table(rows, seed=i)
                ref.append(median_time(lambda table=table: pq.write_table(table, work / "ref.parquet")))
                ref_same.append(median_time(lambda table=table: pq.write_table(table, work / "ref.parquet", compression=COMPRESSION)))
                ours.append(median_time(lambda i=i, table=table: client.push(f"put{i}", table)))
    finally:
        stop(proc)
    mb = sensor_table(rows, 0).nbytes / 1e6
    t_ours, t_ref, t_same = statistics.median(ours), statistics.median(ref), statistics.median(ref_same)
    return {
        "rows": rows, "mb": mb, "do_put_s": t_ours, "write_table_s": t_ref, "ratio": t_ref / t_ours, "best_ratio": min(ref) / min(ours),
        "write_table_same_codec_s": t_same, "same_codec_ratio": t_same / t_ours, "same_codec_best_ratio": min(ref_same) / min(ours),
    }  # fmt: skip


def bench_load(work: Path, rows: int, repeat: int, partitions: int = 4, *, serving: bool = True) -> dict[str, float]:
    port = free_port()
    data = work / ("load" if serving else "load-parquet")
    proc = start_mldata(data, port, serving=serving)
    url = f"grpc://127.0.0.1:{port}"
    try:
        with MldataClient(url, TOKEN) as client:
            names = [client.push("load", sensor_table(rows // partitions, seed=10 + i))["partition"] for i in range(partitions)]
        files = [data / n for n in names]
        if serving:
            copies = [data / "serving" / n.replace(".parquet", ".arrow") for n in names]
            wait_until(lambda: all(c.exists() for c in copies), timeout=60, message="serving copies not written")
        ours, ref = [], []
        for _ in range(repeat):
            ref.append(median_time(lambda: pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")))
            ours.append(median_time(lambda: load_table(["load"], url=url, token=TOKEN, node="bench", sort_by=None)))
        sorted_ours = median_time(lambda: load_table(["load"], url=url, token=TOKEN, node="bench"))
    finally:
        stop(proc)
    t_ours, t_ref = statistics.median(ours), statistics.median(ref)
    return {
        "rows": rows, "partitions": partitions, "serving_copies": serving, "load_table_s": t_ours, "local_read_s": t_ref,
        "ratio": t_ref / t_ours, "best_ratio": min(ref) / min(ours), "load_sorted_s": sorted_ours,
    }  # fmt: skip


async def publish(url_host: str, port: int, tag: str, payloads: list[bytes], in_flight: int = 64) -> None:
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    limit = asyncio.Semaphore(in_flight)
    async with aiomqtt.Client(url_host, port, max_inflight_messages=in_flight, socket_options=nodelay) as client:
        client.pending_calls_threshold = in_flight + 1

        async def one(payload: bytes) -> None:
            try:
                await client.publish(f"ember/v1/data/{tag}", payload, qos=1)
            finally:
                limit.release()

        async with asyncio.TaskGroup() as tasks:
            for payload in payloads:
                await limit.acquire()
                tasks.create_task(one(payload))


def bench_ingest(work: Path, readings: int, per_message: int, flush_rows: int = 50_000) -> dict[str, float]:
    rows = readings_of(generate_table("bench", devices=10, seconds=readings // 10, rate_hz=1.0, seed=1))
    payloads = [readings_envelope("bench-m000", "ingest", rows[i : i + per_message]).to_bytes() for i in range(0, len(rows), per_message)]
    with private_broker() as broker:
        port = free_port()
        proc = start_mldata(work / f"ingest{per_message}", port, mqtt_url=broker.url, flush_rows=flush_rows)
        try:
            with MldataClient(f"grpc://127.0.0.1:{port}", TOKEN) as client:
                probe = [readings_envelope("probe", "probe", [{"ts": 0}]).to_bytes()]

                def subscribed() -> bool:
                    asyncio.run(publish(broker.host, broker.port, "probe", probe))
                    return client.stats().get("messages", 0) > 0

                wait_until(subscribed, timeout=30, interval=0.2)
                t0 = time.perf_counter()
                asyncio.run(publish(broker.host, broker.port, "ingest", payloads))
                t_published = time.perf_counter() - t0
                wait_until(lambda: client.stats().get("rows_flushed", 0) >= len(rows), timeout=120, interval=0.01)
                elapsed = time.perf_counter() - t0
                stats = client.stats()
        finally:
            stop(proc)
    return {
        "readings": len(rows),
        "per_message": per_message,
        "payload_kb": len(payloads[0]) / 1024,
        "publish_s": t_published,
        "ingest_s": elapsed,
        "readings_per_s": len(rows) / elapsed,
        "malformed": stats.get("malformed", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--readings", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        work = Path(tmp)
        results = {
            "put": bench_put(work, args.rows, args.repeat),
            "load": bench_load(work, args.rows, args.repeat),
            "load_parquet": bench_load(work, args.rows, args.repeat, serving=False),
            "ingest": [bench_ingest(work, args.readings, n) for n in (100, 500)],
        }
    put, load, cold = results["put"], results["load"], results["load_parquet"]
    print(json.dumps(results, indent=1))
    print()
    print("| benchmark | Ember (median) | reference (median) | ratio of medians (of bests) / rate | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| do_put {put['rows']:,} rows ({put['mb']:.0f} MB) | {put['do_put_s']:.3f} s | write_table {put['write_table_s']:.3f} s "
        f"| {put['ratio']:.2f}x ({put['best_ratio']:.2f}x) | >= 0.7x |"
    )
    print(
        f"| same, reference with mldata's codec ({COMPRESSION}) | {put['do_put_s']:.3f} s | write_table {put['write_table_same_codec_s']:.3f} s "
        f"| {put['same_codec_ratio']:.2f}x ({put['same_codec_best_ratio']:.2f}x) | |"
    )
    print(
        f"| load_table {load['rows']:,} rows, {load['partitions']} partitions | {load['load_table_s']:.3f} s "
        f"| local read {load['local_read_s']:.3f} s | {load['ratio']:.2f}x ({load['best_ratio']:.2f}x) | >= 0.8x |"
    )
    print(
        f"| same, serving copies off (Parquet decoded while streaming) | {cold['load_table_s']:.3f} s "
        f"| local read {cold['local_read_s']:.3f} s | {cold['ratio']:.2f}x ({cold['best_ratio']:.2f}x) | |"
    )
    for ing in results["ingest"]:
        print(
            f"| MQTT ingestion, {ing['per_message']} readings/message | {ing['readings']:,} in {ing['ingest_s']:.2f} s | - "
            f"| {ing['readings_per_s']:,.0f} readings/s | >= 50,000/s |"
        )


if __name__ == "__main__":
    main()
