"""The web dashboard and the Prometheus endpoints on a running stack (real Mosquitto, control
plane, 3 flamelets with mldata, the `ui` process), driven by the CLI and a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.stack import Stack
from ember.testing import assert_eventually, wait_until
from ember.ui.service import UiService
from ember.ui.settings import UiSettings

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("ember-ui")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE="2")
    with Stack(home, flamelets=3, env=env, grace=10) as s:
        split = partition_digits(s.nodes, scheme="dirichlet", alpha=0.5, seed=0)
        for node in s.nodes:
            info = json.loads(s.mldata_file(node).read_text())
            put_table(split.nodes[node], "digits", info["url"], info["token"])
        yield s


def ember(stack: Stack, *args: str) -> Any:
    """The `ember` command as a user runs it against the stack; its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")} | {"EMBER_HOME": str(stack.home)}
    out = subprocess.run([str(Path(sys.executable).parent / "ember"), *args, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def digits_file(tmp_path: Path, rounds: int) -> Path:
    """The digits example with `rounds` rounds (its code and requirements next to it)."""
    spec = (DIGITS / "job.yaml").read_text().replace("rounds: 10", f"rounds: {rounds}")
    path = DIGITS / f".ui-test-{os.getpid()}-{rounds}.yaml"
    path.write_text(spec)
    return path


def probe_file(tmp_path: Path, seconds: int) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(f"name: probe-long\nlearners: {{count: 3}}\nprobe: {{seconds: {seconds}}}\nruntime: process\n")
    return path


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page (parsed with prometheus_client's parser) by name+labels."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{"))


# --- (a) the dashboard in a real browser ------------------------------------------------------------


def test_dashboard_in_chromium_follows_a_digits_job_live(stack: Stack, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (make install installs it as root)")
        pytest.skip("chromium is not installed: `sudo apt-get install chromium`")
    from playwright.sync_api import expect, sync_playwright

    rounds = 6
    spec = digits_file(tmp_path, rounds)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(stack.ui_url)
            expect(page.locator("#nodes-online")).to_have_text("3 of 3 online", timeout=20_000)
            job = ember(stack, "job", "submit", str(spec))["job"]
            page.goto(f"{stack.ui_url}jobs/{job}")
            page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=20_000)
            # the chart grows round by round in this one page load (no reload: pushed updates)
            marker = page.evaluate("window.__loaded = Math.random()")
            seen: set[int] = set()
            chart = page.locator("#chart")
            while True:
                count = int(chart.get_attribute("data-rounds") or 0)
                seen.add(count)
                if count >= rounds:
                    break
                page.wait_for_function(f"+document.getElementById('chart').dataset.rounds > {count}", timeout=120_000)
            assert page.evaluate("window.__loaded") == marker
            assert len(seen) >= 2, seen  # seen at two sizes at least: it grew while watched
            assert int(page.locator('#chart svg[data-metric="eval_accuracy"] polyline').get_attribute("data-points") or 0) == rounds
            expect(page.locator("#job-state")).to_have_attribute("data-state", "succeeded", timeout=120_000)
            page.locator(".show-log").first.click()
            log = page.locator("pre.log:not([hidden])")
            expect(log).to_be_visible()
            assert log.inner_text().strip()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
            browser.close()
    finally:
        spec.unlink(missing_ok=True)


# --- (b) viewer and operator --------------------------------------------------------------------------


async def test_viewer_cancel_is_refused_and_operator_cancel_cancels(stack: Stack, tmp_path: Path) -> None:
    bundle = tmp_path / "bob.json"
    bundle.write_text(json.dumps({"name": "bob", "password": "-", "kind": "user", "role": "viewer"}))
    viewer = UiSettings.from_env({"EMBER_HOME": str(stack.home)}, mqtt_url=stack.url, identity=str(bundle), ui_port=0)
    job = (await asyncio.to_thread(ember, stack, "job", "submit", str(probe_file(tmp_path, 120))))["job"]
    async with UiService(viewer) as ui, httpx.AsyncClient(timeout=10) as http:
        page = (await http.get(f"{ui.url}jobs/{job}")).text
        assert 'id="cancel"' not in page
        refused = await http.post(f"{ui.url}api/jobs/{job}/cancel", headers={"X-Ember": "1"})
        assert refused.status_code == 403
        await assert_eventually(lambda: _state(stack, job) == "running", timeout=60)
        operator_page = (await http.get(f"{stack.ui_url}jobs/{job}")).text
        assert 'id="cancel"' in operator_page
        done = await http.post(f"{stack.ui_url}api/jobs/{job}/cancel", headers={"X-Ember": "1"})
        assert done.status_code == 200, done.text
        await assert_eventually(lambda: _state(stack, job) == "cancelled", timeout=5)


def _state(stack: Stack, job: str) -> str:
    return str(ember(stack, "job", "show", job)["state"])


# --- (c) many streams, clients that vanish -------------------------------------------------------------


async def test_fifty_streams_and_clients_dropping_mid_stream(stack: Stack) -> None:
    host, port = "127.0.0.1", stack.ui_port
    paths = ["/events/nodes", "/events/jobs", *(f"/events/jobs/missing-{i % 5}" for i in range(48))]
    streams = []
    for path in paths:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        streams.append((reader, writer))
    for reader, _ in streams:  # each got its headers and a first update
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert b"200 OK" in head and b"text/event-stream" in head
        await asyncio.wait_for(reader.readuntil(b"data: "), 20)
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(f"{stack.ui_url}healthz")).json()
        assert health["clients"] >= 50
        for _, writer in streams[::2]:  # half vanish without a word (connection reset)
            writer.transport.abort()
        await assert_eventually(lambda: _clients(stack) <= health["clients"] - 25, timeout=20)
        assert (await http.get(f"{stack.ui_url}nodes")).status_code == 200
        for _, writer in streams[1::2]:
            writer.close()
        await assert_eventually(lambda: _clients(stack) == 0, timeout=20)
        assert (await http.get(f"{stack.ui_url}healthz")).json()["feeds"] == 0


def _clients(stack: Stack) -> int:
    return int(json.loads(urllib.request.urlopen(f"{stack.ui_url}healthz", timeout=10).read())["clients"])


# --- (d) Prometheus ---------------------------------------------------------------------------------------


def test_every_service_serves_prometheus_metrics_that_move_during_a_job(stack: Stack, tmp_path: Path) -> None:
    assert set(stack.metrics_urls) >= {"manager", "builder", "notifier", "ui", "node-1", "mldata-1"}
    before = {name: scrape(url) for name, url in stack.metrics_urls.items()}
    spec = digits_file(tmp_path, 3)
    try:
        job = ember(stack, "job", "submit", str(spec))["job"]
        wait_until(lambda: ember(stack, "job", "show", job)["rounds_completed"] >= 1, timeout=120, message="no round")
        during = {name: scrape(url) for name, url in stack.metrics_urls.items()}
        wait_until(lambda: ember(stack, "job", "show", job)["state"] == "succeeded", timeout=120, message="job did not succeed")
    finally:
        spec.unlink(missing_ok=True)
    after = {name: scrape(url) for name, url in stack.metrics_urls.items()}
    for name in stack.metrics_urls:
        if not name.startswith("mldata"):  # an mldata's bus carries sensor readings only: its counter is rows served
            assert total(after[name], "ember_bus_messages_handled_total") > total(before[name], "ember_bus_messages_handled_total"), name
        assert "ember_bus_messages_dropped_total" + json.dumps({"reason": "invalid"}) in during[name], name
    manager = after["manager"]
    assert total(manager, "ember_events_appended_total") > total(before["manager"], "ember_events_appended_total")
    assert total(manager, "ember_rounds_completed_total") >= total(before["manager"], "ember_rounds_completed_total") + 3
    assert total(manager, "ember_round_duration_seconds_count") >= 3
    assert total(manager, "ember_request_duration_seconds_count") > total(before["manager"], "ember_request_duration_seconds_count")
    assert manager["ember_jobs" + json.dumps({"state": "succeeded"})] >= 1
    served = sum(total(after[f"mldata-{i}"], "ember_mldata_served_rows_total") - total(before[f"mldata-{i}"], "ember_mldata_served_rows_total") for i in (1, 2, 3))
    assert served > 0
    assert total(after["builder"], "ember_build_duration_seconds_count") >= 1
