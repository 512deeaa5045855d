"""`ember up` supervises its processes: a crashed one is restarted with backoff, a crash loop is
given up on with a clear line, and jobs keep working across a service's or the broker's crash.

Real processes throughout: a real `ember up` (Mosquitto, MLflow's server, the control plane,
flamelets), killed with SIGKILL by pid; the crash-loop test runs a real process that keeps
exiting under a `ProcessGroup`.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ember.processes import ProcessGroup, RestartPolicy
from ember.testing import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("ember")
EMBER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "ember.cli.main"]


def children(pid: int) -> dict[str, int]:
    """The stack's processes started by `ember up` (pid `pid`): Ember module or program -> pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != pid:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "-m" in words:
            found[words[words.index("-m") + 1]] = int(entry.name)
        elif words:
            found[Path(words[0]).name] = int(entry.name)
    return found


class Up:
    """A running `ember up` whose output is collected in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.out = tmp_path / "up.log"
        self.env = env
        self._file = open(self.out, "wb")
        self.proc = subprocess.Popen([*EMBER, "up", "--flamelets", "2"], env=env, cwd=ROOT, stdout=self._file, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 120) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc.poll() is None, self.text()[-3000:]
            return re.search(pattern, self.text()[after:])

        wait_until(found, timeout=timeout, interval=0.1, message=f"no {pattern!r} in the output of ember up")
        match = found()
        assert match is not None
        return match

    def ember(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EMBER, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def probe_job_succeeds(self) -> None:
        submit = self.ember("job", "submit", "examples/probe/job.yaml", "--wait", "--wait-timeout", "90")
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "succeeded" in submit.stdout, submit.stdout

    def all_nodes_online(self) -> bool:
        listed = self.ember("node", "list", "--json", timeout=60)
        return listed.returncode == 0 and sorted(n["node"] for n in json.loads(listed.stdout) if n["status"] == "online") == ["node-1", "node-2"]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        finally:
            self._file.close()


@pytest.mark.timeout(400)
def test_ember_up_restarts_a_killed_service_broker_and_tracking_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {"EMBER_HOME": str(home)}
    up = Up(tmp_path, env)
    try:
        up.wait_for("Ember is up")
        tracking = json.loads((home / "broker.json").read_text())["mlflow"]
        assert tracking.startswith("http://127.0.0.1:")

        # a control-plane service: SIGKILL the notifier; it comes back and places the next job
        notifier = children(up.proc.pid)["ember.notifier"]
        mark = len(up.text())
        os.kill(notifier, signal.SIGKILL)
        up.wait_for(r"notifier exited with status -9: restarting it in", after=mark)
        restarted = int(up.wait_for(r"notifier restarted \(pid (\d+)\)", after=mark).group(1))
        assert restarted != notifier and children(up.proc.pid)["ember.notifier"] == restarted
        up.probe_job_succeeds()

        # the broker: SIGKILL Mosquitto; it comes back on the same port and a new job succeeds
        mosquitto = children(up.proc.pid)["mosquitto"]
        mark = len(up.text())
        os.kill(mosquitto, signal.SIGKILL)
        up.wait_for(r"mosquitto restarted \(pid \d+\)", after=mark)
        wait_until(up.all_nodes_online, timeout=60, interval=0.5, message="the nodes never came back online")
        up.probe_job_succeeds()

        # MLflow's server: SIGKILL its parent; the stack clears what is left and starts it again
        mlflow = children(up.proc.pid)["mlflow"]
        mark = len(up.text())
        os.kill(mlflow, signal.SIGKILL)
        up.wait_for(r"mlflow restarted \(pid \d+\)", after=mark)

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{tracking}/health", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_until(answers, timeout=120, interval=0.5, message="the restarted MLflow server never answered")
    finally:
        code = up.stop()
    assert code == 0, up.text()[-3000:]


def test_a_crash_loop_is_given_up_with_a_clear_line(tmp_path: Path) -> None:
    out = io.StringIO()
    group = ProcessGroup(tmp_path / "logs", cwd=tmp_path, echo=out)
    policy = RestartPolicy(initial=0.05, cap=0.2, max_restarts=3, window=60)
    proc = group.add("crasher", [sys.executable, "-c", "print('crashing'); raise SystemExit(3)"], dict(os.environ), group=1)
    group.spawn(proc)

    def gave_up() -> bool:
        group.supervise(policy)
        return proc.gave_up

    try:
        wait_until(gave_up, timeout=60, interval=0.02, message="the crash loop was never given up on")
    finally:
        group.stop_all()
    said = out.getvalue()
    assert proc.starts == 4, said  # the first start and three restarts
    assert said.count("crasher exited with status 3: restarting it in") == 3, said
    delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+)s", said)]
    assert delays == sorted(delays) and delays[-1] <= policy.cap, delays  # exponential, capped
    assert f"crasher exited with status 3 after 3 restarts within 60s: giving up on it (its log: {tmp_path / 'logs' / 'crasher.log'})" in said
    assert (tmp_path / "logs" / "crasher.log").read_text().count("crashing") == 4
