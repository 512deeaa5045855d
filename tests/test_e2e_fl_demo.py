"""`python -m ember.demo` (what `make demo` runs) as a user runs it: a subprocess, its own stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sensor-anomaly"


def run_demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    return subprocess.run(
        [sys.executable, "-m", "ember.demo", "--home", str(home), "--seconds", "600", *args],
        env=env, capture_output=True, text=True, timeout=200,
    )


def test_demo_succeeds_and_reports_fl_next_to_baseline(tmp_path: Path) -> None:
    done = run_demo(tmp_path / "demo")
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert out.count("2,400 readings under tag sensors") == 3  # every node fed by its own devices
    assert re.search(r"accuracy\s+│\s+0\.\d{4}\s+│\s+0\.\d{4}", out), out  # federated next to centralized
    assert re.search(r"MLflow run:\s+[0-9a-f]{32}", out), out
    assert re.search(r"registered model:\s+sensor-anomaly\s+version\s+1", out), out
    assert "succeeded" in out.splitlines()[-1]
    # the stack is down: no process of it is left (its broker file is removed on a clean stop)
    assert not (tmp_path / "demo" / "broker.json").exists()


def test_demo_exits_nonzero_when_the_job_fails(tmp_path: Path) -> None:
    example = tmp_path / "broken-example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__"))
    (example / "broken.py").write_text(
        "from model import SensorModel\n\n\n"
        "class Broken(SensorModel):\n"
        "    def preprocess(self, table, config):\n"
        "        raise RuntimeError('sensor table unreadable')\n"
    )
    job = (example / "job.yaml").read_text().replace("entrypoint: model:SensorModel", "entrypoint: broken:Broken")
    (example / "job.yaml").write_text(job)
    done = run_demo(tmp_path / "demo", "--example", str(example))
    assert done.returncode == 1, done.stdout[-3000:]
    assert "failed" in done.stdout.splitlines()[-1]
    assert not (tmp_path / "demo" / "broker.json").exists()


def test_demo_says_which_example_it_needs_before_starting_anything(tmp_path: Path) -> None:
    empty = tmp_path / "examples"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    done = subprocess.run(
        [sys.executable, "-m", "ember.demo", "--home", str(tmp_path / "demo")],
        env=dict(env, EMBER_EXAMPLES=str(empty)), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert f"{empty / 'sensor-anomaly'} has no job.yaml" in done.stderr
    assert not (tmp_path / "demo").exists()  # no stack was started
