"""`ember.metrics` through the `Service` base: a service with `metrics_port` serves Prometheus
text that prometheus_client's parser reads, from its own state and its bus counters."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember import log as ember_log
from ember.errors import InvalidSettings
from ember.metrics import Metric, counters
from ember.processes import free_port
from ember.service import Service
from ember.settings import Settings

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _log_to_this_stderr() -> None:
    """Log to the stderr of this test (a test before it may have configured logging to a captured
    stream that is closed by now)."""
    ember_log.configure("json", "warning")


class Counting(Service):
    name = "counting"

    def __init__(self, settings: Settings) -> None:
        super().__init__(grace=1.0)
        self.settings = settings
        self.done = 0

    def metrics(self) -> Iterable[Metric]:
        return counters("ember_test_work", "work", {"done": self.done})


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_service_serves_its_state_as_prometheus_text_until_it_stops() -> None:
    port = free_port()
    async with Counting(Settings(metrics_port=port)) as service:
        # scraped from another thread: the values are read on the service's event loop
        assert (await asyncio.to_thread(scrape, port))["ember_test_work_done_total"] == 0
        service.done = 3
        samples = await asyncio.to_thread(scrape, port)
        assert samples["ember_test_work_done_total"] == 3
        assert "process_cpu_seconds_total" in samples
    with pytest.raises(OSError):
        scrape(port)


async def test_a_busy_metrics_port_is_a_settings_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(InvalidSettings, match="cannot serve metrics"):
            async with Counting(Settings(metrics_port=busy.getsockname()[1])):
                pass


async def test_port_zero_serves_nothing() -> None:
    async with Counting(Settings()) as service:
        assert service._metrics is None
