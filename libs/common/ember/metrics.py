"""Prometheus metrics: one `/metrics` endpoint per long-running process (`metrics_port`; 0 = off).

Two kinds of metrics, both served by `MetricsServer`:

- counters and histograms that code increments where the thing happens (module-level, in
  prometheus_client's default registry, with its process metrics): events appended, request
  latency, build durations, mldata rows and bytes served;
- values read from the service's own state at scrape time, through `Service.metrics()`: bus
  message counters, jobs by state, actors by state per node, rounds, mldata ingestion.

Labels are bounded sets (state, node, reason, action, event type): never a job or actor id.
"""

from __future__ import annotations

import threading
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

EVENTS_APPENDED = Counter("ember_events_appended", "Events appended to the event log by this process", ["type"])
REQUEST_SECONDS = Histogram("ember_request_duration_seconds", "Time from a request's arrival to its reply", ["action", "outcome"])
BUILD_SECONDS = Histogram(
    "ember_build_duration_seconds", "Duration of job artifact builds", ["outcome"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800)
)
MLDATA_SERVED_ROWS = Counter("ember_mldata_served_rows", "Rows served to actors over Flight (do_get)")
MLDATA_SERVED_BYTES = Counter("ember_mldata_served_bytes", "Arrow buffer bytes served to actors over Flight (do_get)")
ROUND_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

BUS_DROP_REASONS = {"dropped_invalid": "invalid", "handler_errors": "handler_error", "casts_not_addressed": "not_addressed"}
"""`Bus.stats` keys counted as dropped messages, and the `reason` label each gets."""


def bus_metrics(stats: Mapping[str, int]) -> list[Metric]:
    """`ember_bus_messages_handled_total` and `..._dropped_total{reason}` from `Bus.stats`."""
    handled = CounterMetricFamily("ember_bus_messages_handled", "Inbound MQTT messages handled")
    handled.add_metric([], stats.get("handled", 0))
    dropped = CounterMetricFamily("ember_bus_messages_dropped", "Inbound MQTT messages dropped, by reason", labels=["reason"])
    for key, reason in BUS_DROP_REASONS.items():
        dropped.add_metric([reason], stats.get(key, 0))
    return [handled, dropped]


def tally_gauge(name: str, doc: str, labels: list[str], counts: Mapping[Any, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(counts.items()):
        gauge.add_metric(list(key), value)
    return gauge


class RoundObserver:
    """Feeds the rounds a projection gained since the last scrape into a round-duration histogram
    and counter (the projection keeps every round; each is observed once)."""

    def __init__(self, registry_name: str = "ember_round_duration_seconds") -> None:
        self.histogram = Histogram(registry_name, "Duration of completed federated rounds", buckets=ROUND_SECONDS_BUCKETS, registry=None)
        self.seen: dict[str, int] = {}
        self.completed = 0

    def observe(self, jobs: Mapping[str, Any]) -> None:
        for job_id, view in jobs.items():
            start = self.seen.get(job_id, 0)
            for rnd in view.rounds[start:]:
                self.histogram.observe(float(rnd.get("duration_s", 0.0)))
                self.completed += 1
            self.seen[job_id] = len(view.rounds)


def projection_metrics(projection: Any, rounds: RoundObserver) -> list[Metric]:
    """Jobs by state, actors by state per node (latest generation of each job), nodes by status,
    rounds completed and their durations, from a manager's `Projection`."""
    jobs = TallyCounter((view.state.value,) for view in projection.jobs.values())
    actors = TallyCounter(
        (actor.node, actor.state.value) for view in projection.jobs.values() if not view.state.terminal for actor in view.current_actors()
    )
    nodes = TallyCounter(("online" if node.online else "offline",) for node in projection.nodes.values())
    rounds.observe(projection.jobs)
    completed = CounterMetricFamily("ember_rounds_completed", "Federated rounds completed (all jobs)")
    completed.add_metric([], rounds.completed)
    return [
        tally_gauge("ember_jobs", "Jobs by state", ["state"], jobs),
        tally_gauge("ember_actors", "Actors of running jobs by node and state", ["node", "state"], actors),
        tally_gauge("ember_nodes", "Known nodes by status", ["status"], nodes),
        completed,
        *rounds.histogram.collect(),
    ]


def counters(prefix: str, doc: str, values: Mapping[str, int], *, gauges: Iterable[str] = ()) -> list[Metric]:
    """One counter (or gauge, for names in `gauges`) per entry of a plain counter dict."""
    out: list[Metric] = []
    for key, value in sorted(values.items()):
        name = f"{prefix}_{key}"
        family: Metric = GaugeMetricFamily(name, f"{doc}: {key}") if key in gauges else CounterMetricFamily(name, f"{doc}: {key}")
        family.add_metric([], value)  # type: ignore[attr-defined]
        out.append(family)
    return out


class _ServiceCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())


class _DefaultCollector(Collector):
    """The module-level metrics and the process metrics of prometheus_client's default registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class MetricsServer:
    """Serves `/metrics` on `host:port` from a thread (prometheus_client's WSGI server): the
    default registry plus the service's own `collect()`. `port` 0 picks nothing: the server is off."""

    def __init__(self, collect: Callable[[], Iterable[Metric]], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DefaultCollector())
        self.registry.register(_ServiceCollector(collect))
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        if self.port and self._server is None:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
