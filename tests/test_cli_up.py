"""As a new user types it: `ember up` in one terminal, `ember job submit examples/probe/job.yaml --wait` in another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ember.testing import wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("ember")  # the console script a user runs
EMBER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "ember.cli.main"]


def test_ember_up_then_submit_probe_job_and_wait(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env["EMBER_HOME"] = str(home)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([*EMBER, "up", "--flamelets", "3"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Ember is up" in (tmp_path / "up.log").read_text() or up.poll() is not None, timeout=120, interval=0.2)
        assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        assert json.loads((home / "broker.json").read_text())["url"].startswith("mqtt://127.0.0.1:")

        nodes = subprocess.run([*EMBER, "node", "list", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert nodes.returncode == 0, nodes.stderr
        assert sorted(n["node"] for n in json.loads(nodes.stdout) if n["status"] == "online") == ["node-1", "node-2", "node-3"]
        # authentication is on with no manual step: the same command without the home's identity is refused
        url = json.loads((home / "broker.json").read_text())["url"]
        stranger = dict(env, EMBER_HOME=str(tmp_path / "elsewhere"), EMBER_MQTT_URL=url)
        refused = subprocess.run([*EMBER, "node", "list"], env=stranger, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 6, refused.stdout + refused.stderr
        assert (home / "pki" / "mosquitto.acl").exists()

        submit = subprocess.run(
            [*EMBER, "job", "submit", "examples/probe/job.yaml", "--wait"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        for state in ("submitted", "building", "placing", "deploying", "running", "succeeded"):
            assert state in submit.stdout, submit.stdout
        second = subprocess.run([*EMBER, "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 6 and "already runs" in second.stderr, second.stderr
        assert (home / "broker.json").exists()  # the running stack's files are left alone
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not (home / "broker.json").exists()  # removed on a clean shutdown
    lines = (tmp_path / "up.log").read_text().splitlines()
    assert any(line.startswith("manager ") for line in lines) and any(line.startswith("node-1 ") for line in lines)

    def last(marker: str) -> int:
        return max(i for i, line in enumerate(lines) if marker in line)

    # ordered shutdown: every flamelet (and so every actor) before the control-plane services
    assert last('"flamelet.stopped"') < min(last('"manager.stopped"'), last('"notifier.stopped"'))


def test_an_insecure_stack_lets_an_anonymous_client_in(tmp_path: Path) -> None:
    """`ember up --insecure` (`Stack(secure=False)`): no identities, an anonymous client is served."""
    import asyncio

    from ember.bus import Bus
    from ember.security.mqtt import MqttSecurity
    from ember.stack import Stack

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {"EMBER_HOME": str(tmp_path)}
    with Stack(tmp_path, flamelets=0, mldata=False, env=env, secure=False) as stack:
        assert stack.identity("manager") is None and not (tmp_path / "pki").exists()

        async def ask() -> object:
            async with Bus(stack.url, security=MqttSecurity()) as bus:
                return await bus.request("nodes.list", {}, timeout=10)

        assert asyncio.run(ask()) == []
