"""Fuzz every topic the manager, builder, notifier, a flamelet and the mldata subscribe to, against a
real stack with authentication and the ACL on, then check that every service is alive and serves.

Payloads are drawn by hypothesis (`payloads`): random bytes, random JSON, deeply nested documents,
and envelopes of the expected type (or not) whose fields have wrong types, huge strings, odd
numbers or deep nesting. Each is published as the principal the ACL lets publish on that topic
(`ember.security.fuzz.targets`), so it reaches the services. The long run is bench/fuzz.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.bus import Bus
from ember.data.client import MldataClient
from ember.security.fuzz import Target, targets
from ember.stack import Stack
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(240)

EXAMPLES = 200
TARGETS = targets(operator="operator")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
huge = st.one_of(
    st.integers(min_value=201, max_value=70_000).map(lambda n: "é" * n),
    st.integers(min_value=1_000, max_value=5_000).map(lambda n: list(range(n))),
)
deep = st.integers(min_value=10, max_value=50_000).map(lambda depth: "[" * depth + "]" * depth)


def payloads(target: Target) -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(target.fields) | st.text(max_size=8) if target.fields else st.text(max_size=8)
    data = st.dictionaries(keys, json_values | huge, max_size=6) | json_values
    envelope = st.fixed_dictionaries(
        {
            "id": st.text(max_size=40) | st.integers(),
            "type": st.sampled_from(target.types) | st.text(max_size=20) | json_values,
            "time": st.sampled_from(["2026-01-01T00:00:00Z", "2099-12-31T23:59:59+00:00", "yesterday"]) | json_values,
            "source": st.text(max_size=20) | huge,
            "subject": st.text(max_size=20) | huge,
            "data": data,
            "v": st.sampled_from([1, 2, "1", None]),
        },
        optional={"extra": json_values},
    )
    return st.one_of(
        st.binary(max_size=256),
        json_values.map(lambda value: json.dumps(value).encode()),
        deep.map(str.encode),
        envelope.map(lambda value: json.dumps(value).encode()),
    )


class Publisher:
    """One connection per principal, on an event loop in a background thread (hypothesis calls
    the test body synchronously, once per payload)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-publisher", daemon=True)
        self.thread.start()
        self.buses: dict[str, Bus] = {}

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _bus(self, principal: str) -> Bus:
        if principal not in self.buses:
            name = self.stack.operator if principal == "operator" else principal
            bus = Bus(self.stack.url, source="fuzz", security=self.stack.security(name))
            await bus.start(wait=10)
            self.buses[principal] = bus
        return self.buses[principal]

    def publish(self, principal: str, topic: str, payload: bytes) -> None:
        async def send() -> None:
            await (await self._bus(principal)).publish(f"ember/v1/{topic}", payload)

        self.run(send())

    def request(self, action: str, data: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        async def ask() -> Any:
            return await (await self._bus("operator")).request(action, data or {}, timeout=timeout)

        return self.run(ask(), timeout + 5)

    def close(self) -> None:
        async def shutdown() -> None:
            for bus in self.buses.values():
                await bus.shutdown()

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("ember-fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), EMBER_KEEPALIVE="2")
    with Stack(home, flamelets=2, env=env, grace=10) as running:
        yield running


@pytest.fixture(scope="module")
def publisher(stack: Stack) -> Iterator[Publisher]:
    pub = Publisher(stack)
    try:
        yield pub
    finally:
        pub.close()


def online_nodes(publisher: Publisher) -> list[str]:
    return sorted(n["node"] for n in publisher.request("nodes.list") if n["status"] == "online")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_generated_payloads_on_a_subscribed_topic_leave_every_service_serving(stack: Stack, publisher: Publisher, target: Target) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(payload=payloads(target), index=st.integers(min_value=0, max_value=len(target.topics) - 1))
    def flood(payload: bytes, index: int) -> None:
        publisher.publish(target.principal, target.topics[index], payload)

    flood()
    assert stack.exited() == {}
    assert online_nodes(publisher) == ["node-1", "node-2"]  # the manager answers, and still sees both nodes


def test_after_the_fuzzing_every_service_runs_a_job_and_mldata_answers(stack: Stack, publisher: Publisher, tmp_path: Path) -> None:
    spec = {"name": "after-fuzz", "learners": {"count": 2}, "probe": {"seconds": 0.2}, "runtime": "process"}
    job = publisher.request("jobs.submit", {"spec": spec, "spec_dir": str(tmp_path)})["job"]

    async def finished() -> dict[str, Any]:
        bus = await publisher._bus("operator")

        async def ended() -> dict[str, Any] | None:
            summary = await bus.request("jobs.get", {"job": job})
            return summary if summary["state"] in ("succeeded", "failed", "cancelled") else None

        return await assert_eventually(ended, timeout=60, interval=0.1, message=f"{job} never ended")

    summary = publisher.run(finished(), timeout=90)
    assert summary["state"] == "succeeded", summary.get("reason")  # builder, notifier, flamelets and manager all served
    for node in stack.nodes:
        state = json.loads(stack.mldata_file(node).read_text())
        with MldataClient(state["url"], state["token"]) as client:
            assert isinstance(client.tags(), list)
    assert stack.exited() == {}
