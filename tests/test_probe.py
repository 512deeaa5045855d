"""The probe actor as a user runs it, and the probe example job."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember.jobspec import load_spec_file, validate_spec
from ember.testing import wait_until

pytestmark = pytest.mark.timeout(30)
EXAMPLE = Path(__file__).parents[1] / "examples" / "probe" / "job.yaml"


def test_probe_runs_for_its_time_and_exits_with_its_code():
    done = subprocess.run([sys.executable, "-m", "ember.actors.probe", "--seconds", "0.1", "--exit-code", "3"],
                          capture_output=True, text=True, env={"EMBER_ACTOR_ID": "a1", "PATH": "/usr/bin"}, timeout=20)
    assert done.returncode == 3
    lines = done.stdout.splitlines()
    assert lines[0].startswith("probe: started") and "actor=a1" in lines[0]
    assert lines[-1].startswith("probe: done") and "exiting with code 3" in lines[-1]


def test_probe_exits_promptly_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "ember.actors.probe", "--seconds", "600"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("probe: started")
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: proc.poll() is not None, timeout=5, message="the probe ignored SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in proc.stdout.read()


def test_probe_example_is_a_valid_job():
    spec = validate_spec(load_spec_file(EXAMPLE))
    assert spec.name == "probe" and spec.learners.count == 3 and spec.runtime == "process"
    assert spec.probe is not None and spec.probe.seconds == 2
