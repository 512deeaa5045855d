"""The dashboard's latency and cost: time from a round's end (its `RoundCompleted` envelope
time, stamped by the aggregator) to its point in an open job page in headless Chromium, and the
`ui` process's CPU share, over one digits job of `ROUNDS` rounds on a local 3-node stack.

    python -m bench.bench_ui [ROUNDS]        # needs Debian's chromium
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from ember import topics
from ember.bus import Bus, Message
from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.jobspec import load_spec_file
from ember.stack import Stack

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_job(stack: Stack, rounds: int, ended: dict[int, float], job_box: dict[str, str], opened: threading.Event) -> None:
    spec = load_spec_file(DIGITS / "job.yaml")
    spec["training"]["rounds"] = rounds

    async def on_round(message: Message) -> None:
        env = message.body
        if env.subject == job_box.get("job"):
            ended[int(env.data["round"])] = env.time.timestamp()

    async with Bus(stack.url, source="bench-ui") as bus:
        bus.subscribe(topics.EVENT, on_round, aggregate="job", type="RoundCompleted")
        job_box["job"] = (await bus.request("jobs.submit", {"spec": spec, "spec_dir": str(DIGITS)}, timeout=30))["job"]
        await asyncio.to_thread(opened.wait, 60)
        while True:
            summary = await bus.request("jobs.get", {"job": job_box["job"], "rounds": 0}, timeout=10)
            if summary["state"] in ("succeeded", "failed", "cancelled"):
                job_box["state"] = summary["state"]
                return
            await asyncio.sleep(0.5)


def main() -> int:
    from playwright.sync_api import sync_playwright

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as home, Stack(Path(home), flamelets=3, env=dict(os.environ, EMBER_HOME=home)) as stack:
        split = partition_digits(stack.nodes, scheme="dirichlet", alpha=0.5, seed=0)
        for node in stack.nodes:
            info = json.loads(stack.mldata_file(node).read_text())
            put_table(split.nodes[node], "digits", info["url"], info["token"])
        ended: dict[int, float] = {}
        job_box: dict[str, str] = {}
        opened = threading.Event()
        runner = threading.Thread(target=lambda: asyncio.run(run_job(stack, rounds, ended, job_box, opened)))
        ui_pid = stack.pid("ui")
        assert ui_pid is not None
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            runner.start()
            while "job" not in job_box:
                time.sleep(0.05)
            page.goto(f"{stack.ui_url}jobs/{job_box['job']}")
            page.wait_for_function("document.getElementById('conn').textContent === 'live'")
            cpu0, wall0 = cpu_seconds(ui_pid), time.monotonic()
            opened.set()
            runner.join()
            cpu1, wall1 = cpu_seconds(ui_pid), time.monotonic()
            page.wait_for_function(f"Object.keys(window.emberRoundSeen).length >= {rounds}", timeout=30_000)
            seen = {int(k): v / 1000 for k, v in page.evaluate("window.emberRoundSeen").items()}
            browser.close()
    # rounds the page had at load time (rendered by the server) are not a push: left out
    delays = sorted(seen[r] - ended[r] for r in ended if r in seen and seen[r] > ended[r])
    print(f"job {job_box.get('job')} {job_box.get('state')}: {len(ended)} rounds ended, {len(delays)} pushed to the open page")
    if delays:
        print(f"round end -> point in the page: median {statistics.median(delays) * 1000:.0f} ms, "
              f"p90 {delays[int(0.9 * (len(delays) - 1))] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
    print(f"dashboard process CPU: {cpu1 - cpu0:.2f} s over {wall1 - wall0:.1f} s of the job ({100 * (cpu1 - cpu0) / (wall1 - wall0):.1f}% of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
