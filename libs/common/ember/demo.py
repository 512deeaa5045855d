"""`python -m ember.demo` (`make demo`): Ember end to end on this machine, in a few minutes.

1. starts the local stack (`ember.stack.Stack`: private Mosquitto, manager, builder, notifier,
   3 flamelets each with its mldata) in `./.ember-demo` (wiped first; `--home` to change);
2. runs seeded mock devices on each node (`ember.devices.mock.run_mock`, different machines and
   fault rates per node) that send their readings to the node's own mldata, until every node
   holds enough readings under the data tag `sensors`;
3. submits the sensor-anomaly example's `job.yaml` and shows the job live (the CLI's watch view);
4. prints the final federated metrics next to a centralized baseline (the same model trained on
   all nodes' readings pooled, read back from the nodes' mldata), the MLflow run id and the
   registered model version.

The example folder is `--example DIR`, else `$EMBER_EXAMPLES/sensor-anomaly`, else
`examples/sensor-anomaly` of the source checkout this module runs from (an installed Ember has
none: pass one of the two).

With `--runtime docker` (`make demo-docker`) the same job runs in containers: the builder builds
its image and pushes it to a private registry the stack starts (or the one `EMBER_REGISTRY`
names), and the flamelets pull it by digest and run every actor as a container.

Exit status: 0 when the job succeeded, 1 when it failed (or the demo itself failed), 130 on
Ctrl-C. The stack is always shut down in order before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

MARKER = ".ember-demo-home"
EXAMPLE = "sensor-anomaly"
CHECKOUT_EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
"""`examples/` beside `libs/common/ember/demo.py` in a source checkout (absent once installed)."""
TAG = "sensors"
DEVICES = 4
SECONDS = 1800
"""Seconds of history each device replays (sampled at 1 Hz): 4 x 1800 = 7,200 readings a node."""
RATE_HZ = 1.0
BASE_SEED = 11


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ember.demo", description="Run Ember's demo: sensor fault detection, federated over 3 nodes.")
    parser.add_argument("--home", type=Path, default=Path(".ember-demo"), help="Ember home for the demo stack (wiped first)")
    parser.add_argument("--example", type=Path, default=None,
                        help="example folder with job.yaml (default: $EMBER_EXAMPLES/sensor-anomaly, else the checkout's examples/sensor-anomaly)")
    parser.add_argument("--seconds", type=int, default=SECONDS, help="seconds of readings each device sends")
    parser.add_argument("--devices", type=int, default=DEVICES, help="mock devices per node")
    parser.add_argument("--timeout", type=float, default=240.0, help="give up on the job after this many seconds")
    parser.add_argument("--runtime", choices=["process", "docker"], default="process", help="run the actors as processes or containers")
    parser.add_argument("--verbose", action="store_true", help="echo every service's log lines")
    return parser.parse_args(argv)


def find_example(given: Path | None, env: dict[str, str] | None = None) -> Path:
    """The example folder to run (see the module doc); SystemExit saying what to pass if none."""
    env = dict(os.environ) if env is None else env
    if given is not None:
        folder = given
    elif env.get("EMBER_EXAMPLES"):
        folder = Path(env["EMBER_EXAMPLES"]).expanduser() / EXAMPLE
    elif (CHECKOUT_EXAMPLES / EXAMPLE).is_dir():
        folder = CHECKOUT_EXAMPLES / EXAMPLE
    else:
        raise SystemExit(
            "no example to run: pass --example DIR (a folder with job.yaml, such as examples/sensor-anomaly "
            "in Ember's source) or set EMBER_EXAMPLES to Ember's examples/ folder"
        )
    if not (folder / "job.yaml").is_file():
        raise SystemExit(f"{folder} has no job.yaml: pass --example with an example folder")
    return folder.resolve()


def fresh_home(home: Path) -> Path:
    """An empty demo home; refuses to wipe a folder this demo did not create."""
    home = home.expanduser().resolve()
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise SystemExit(f"{home} exists and is not a demo home (no {MARKER}); pick another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("created by `python -m ember.demo`; safe to delete\n")
    return home


def load_example(folder: Path, module: str = "model") -> ModuleType:
    """The example's model module (for its centralized baseline), imported from its folder."""
    name = f"ember_demo_{module}"
    spec = importlib.util.spec_from_file_location(name, folder / f"{module}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def node_endpoint(stack: Any, node: str) -> tuple[str, str]:
    info = json.loads(stack.mldata_file(node).read_text())
    return info["url"], info["token"]


async def feed_nodes(stack: Any, tag: str, devices: int, seconds: int, console: Console) -> dict[str, int]:
    """Mock devices on every node, sending to that node's mldata; returns rows per node."""
    from ember.devices.mock import run_mock
    from ember.data.client import MldataClient

    async def one(index: int, node: str) -> int:
        url, token = node_endpoint(stack, node)
        await run_mock(devices=devices, rate=0, duration=seconds, nominal_hz=RATE_HZ, tag=tag, node=node,
                       transport="flight", seed=BASE_SEED + index, flight_url=url, token=token)
        with MldataClient(url, token) as client:
            return sum(int(t["rows"]) for t in client.tags() if t.get("tag") == tag)

    rows = await asyncio.gather(*(one(i, node) for i, node in enumerate(stack.nodes)))
    held = dict(zip(stack.nodes, rows, strict=True))
    needed = devices * seconds * RATE_HZ
    for node, count in held.items():
        console.print(f"  {node}: {count:,} readings under tag [bold]{tag}[/]")
        if count < needed:
            raise RuntimeError(f"{node} holds {count} readings of {tag!r}, expected {needed:.0f}")
    return held


def baseline(stack: Any, example: Path, spec: dict[str, Any], tag: str) -> dict[str, float]:
    """The example's centralized baseline on the very readings the nodes hold."""
    from ember.data.client import load_table
    from ember.sdk import TrainConfig

    model = load_example(example)
    tables = []
    for node in stack.nodes:
        url, token = node_endpoint(stack, node)
        tables.append(load_table([tag], url=url, token=token, node=node))
    t = spec.get("training", {})
    config = TrainConfig(local_epochs=int(t.get("local_epochs", 1)), batch_size=int(t.get("batch_size", 32)),
                         learning_rate=float(t.get("learning_rate", 0.01)), seed=int(t.get("seed", 0)))
    epochs = int(t.get("rounds", 3)) * config.local_epochs
    return model.centralized_baseline(tables, config, epochs=epochs)


def find_mlflow_run(tracking_uri: str, experiment: str, job: str) -> tuple[str, str]:
    """(run id, registered model version) of a job in MLflow: the run is named after the job id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return "", ""
    runs = client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{job}'", max_results=1)
    if not runs:
        return "", ""
    run_id = runs[0].info.run_id
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    return run_id, str(versions[0].version) if versions else ""


def report(console: Console, job: dict[str, Any], central: dict[str, float] | None, model_name: str) -> None:
    result = job.get("result") or {}
    final = dict(result.get("metrics") or (job.get("rounds") or [{}])[-1].get("metrics", {}))
    if all(f"eval_{k}_frac" in final for k in ("tp", "fp", "fn")):  # pooled over nodes, not a mean of F1s
        tp, fp, fn = (final[f"eval_{k}_frac"] for k in ("tp", "fp", "fn"))
        final["eval_precision"] = tp / (tp + fp) if tp + fp else 0.0
        final["eval_recall"] = tp / (tp + fn) if tp + fn else 0.0
        p, r = final["eval_precision"], final["eval_recall"]
        final["eval_f1"] = 2 * p * r / (p + r) if p + r else 0.0
    names = ("accuracy", "precision", "recall", "f1", "loss")
    table = Table(title=f"{job.get('name')}: federated vs centralized (same readings, same model)")
    table.add_column("metric")
    table.add_column("federated (Ember)", justify="right")
    table.add_column("centralized baseline", justify="right")
    for name in names:
        fl = final.get(f"eval_{name}")
        base = (central or {}).get(name)
        if fl is None and base is None:
            continue
        table.add_row(name, "-" if fl is None else f"{fl:.4f}", "-" if base is None else f"{base:.4f}")
    console.print(table)
    console.print(f"rounds: {len(job.get('rounds') or [])}   MLflow run: [bold]{result.get('mlflow_run_id') or '-'}[/]   "
                  f"registered model: [bold]{model_name}[/] version [bold]{result.get('model_version') or '-'}[/]")


async def run_job(stack: Any, spec: dict[str, Any], spec_dir: Path, console: Console, timeout: float) -> dict[str, Any]:
    from ember.bundle_bus import submit_job
    from ember.bus import Bus
    from ember.cli.watch import follow_job

    async with Bus(stack.url, source="ember-demo", security=stack.security()) as bus:  # as the local operator
        reply = await submit_job(bus, spec, spec_dir, request_timeout=30)
        console.print(f"submitted [bold]{reply['job']}[/]")
        return await follow_job(bus, reply["job"], console, timeout=timeout)


def demo(args: argparse.Namespace, console: Console) -> int:
    from ember.jobspec import load_spec_file
    from ember.settings import Settings
    from ember.stack import Stack

    started = time.monotonic()
    example = find_example(args.example)
    home = fresh_home(args.home)
    spec = load_spec_file(example / "job.yaml")
    spec["runtime"] = args.runtime
    tag = (spec.get("data") or {}).get("tags", [TAG])[0]
    console.rule("[bold]Ember demo")
    console.print(f"home {home}; starting the local stack (Mosquitto, control plane, 3 flamelets + mldata), runtime {args.runtime}…")
    with Stack(home, flamelets=3, registry=args.runtime == "docker", echo=sys.stderr if args.verbose else None) as stack:
        console.print(f"stack ready on {stack.url} ({time.monotonic() - started:.1f}s)")
        console.print(f"mock devices: {args.devices} machines a node, {args.seconds} s of readings each")
        asyncio.run(feed_nodes(stack, tag, args.devices, args.seconds, console))
        console.print("centralized baseline on the same readings…")
        central = baseline(stack, example, spec, tag)
        console.rule(f"job {spec.get('name')}")
        job = asyncio.run(run_job(stack, spec, example, console, args.timeout))
        result = job.setdefault("result", {}) or {}
        if job.get("state") == "succeeded" and not (result.get("mlflow_run_id") and result.get("model_version")):
            experiment = (spec.get("tracking") or {}).get("experiment") or spec["name"]
            uri = Settings.from_env(dict(os.environ, EMBER_HOME=str(home))).resolved_mlflow_uri()
            result["mlflow_run_id"], result["model_version"] = find_mlflow_run(uri, experiment, job["job"])
            job["result"] = result
        console.rule("result")
        report(console, job, central, (spec.get("tracking") or {}).get("model_name") or spec["name"])
        ok = job.get("state") == "succeeded"
        if not ok:
            console.print(f"[red]job {job.get('job')} {job.get('state')}[/]: {job.get('reason', '')}")
            console.print(f"service logs: {home / 'logs'}")
        console.print("stopping the stack…")
    console.print(f"done in {time.monotonic() - started:.0f}s — {'[green]succeeded[/]' if ok else '[red]failed[/]'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    from ember.log import configure

    args = parse_args(argv)
    configure("console", "warning")
    console = Console()
    try:
        return demo(args, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; the stack was stopped[/]")
        return 130
    except Exception as exc:  # the demo must say what broke, then exit non-zero
        console.print(f"[red]demo failed:[/] {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
