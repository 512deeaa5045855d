import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ember import topics
from ember.actions import Action, Payload
from ember.bus import Bus, Message
from ember.envelope import inbound
from ember.errors import EmberError, InvalidJobSpec, InvalidRequest, RequestTimeout
from ember.mqtt_compat import paho_client
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(30)
ROOT = "ember/v1"


@pytest.fixture
def logged() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """The JSON log lines of one event name written by loggers made during the test."""
    buffer = io.StringIO()
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield lambda event: [line for line in map(json.loads, buffer.getvalue().splitlines()) if line.get("event") == event]
    structlog.configure(**saved)


class Echo(Payload):
    x: int = 0
    bad: bool = False
    broken: bool = False


class Echoed(Payload):
    echo: dict[str, Any]


ECHO = Action("echo", Echo, Echoed, "echo the request")


async def echo(request: Echo, _envelope) -> Any:
    if request.bad:
        raise InvalidJobSpec("bad spec", details=[{"field": "name", "reason": "missing"}])
    if request.broken:
        return {"not": "an Echoed"}
    return {"echo": request.model_dump(exclude_unset=True)}


async def test_request_reply_and_typed_errors(mqtt_broker):
    server = Bus(mqtt_broker.url, client_id="server")
    server.serve(ECHO, echo)
    async with server, Bus(mqtt_broker.url) as client:
        assert await client.request(ECHO, Echo(x=1)) == {"echo": {"x": 1}}
        assert await client.request("echo", {"x": 2}) == {"echo": {"x": 2}}
        with pytest.raises(InvalidJobSpec) as err:
            await client.request("echo", {"bad": True})
        assert err.value.details == [{"field": "name", "reason": "missing"}]
        with pytest.raises(InvalidRequest) as err:  # validated against the action's request model
            await client.request("echo", {"x": "one", "colour": "red"})
        assert {d["field"] for d in err.value.details} == {"x", "colour"}
        with pytest.raises(EmberError) as err:  # a result that does not fit the reply model is a bug
            await client.request("echo", {"broken": True})
        assert err.value.code == "internal" and server.stats["handler_errors"] == 1
    async with Bus(mqtt_broker.url) as client:  # nobody serves any more
        with pytest.raises(RequestTimeout):
            await client.request("echo", {}, timeout=0.3)


async def test_invalid_or_unknown_requests_get_an_error_reply_naming_the_problem(mqtt_broker, logged):
    """Not an envelope, an unknown action, data that does not validate, an action name that is
    not an id: each gets an error reply (no waiting out a timeout), one warning line, a count."""
    replies: list[Message] = []

    async def on_reply(message: Message) -> None:
        replies.append(message)

    server = Bus(mqtt_broker.url, client_id="server")
    server.serve(ECHO, echo)
    async with server, Bus(mqtt_broker.url) as client:
        client.subscribe(topics.REPLY, on_reply, client="probe")
        await assert_eventually(lambda: client.connected)

        async def ask(action: str, payload: bytes, correlation: bytes) -> None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = topics.REPLY.format(ROOT, client="probe")
            props.CorrelationData = correlation
            await client.publish(f"{ROOT}/req/{action}", payload, properties=props)

        cases = {
            b"junk": ("echo", b"not json", "invalid"),
            b"unknown": ("jobs.frobnicate", client.envelope("request.jobs.frobnicate", {}).to_bytes(), "unknown action 'jobs.frobnicate'"),
            b"invalid": ("echo", client.envelope("request.echo", {"x": "one"}).to_bytes(), "x:"),
            b"long": ("e" * 201, client.envelope("request.x", {}).to_bytes(), "topic parameter action"),
        }

        async def answered() -> bool:
            got = {bytes(m.properties.CorrelationData) for m in replies}
            for correlation, (action, payload, _) in cases.items():
                if correlation not in got:
                    await ask(action, payload, correlation)
            return got >= set(cases)

        await assert_eventually(answered, timeout=10, interval=0.2)  # the first may precede the subscription
        for message in replies:
            _, _, expected = cases[bytes(message.properties.CorrelationData)]
            assert message.body.type == "reply" and message.body.data["ok"] is False
            error = message.body.data["error"]
            assert error["code"] == "invalid_request" and expected in error["message"], error
        assert server.stats["handler_errors"] == 0
        assert server.stats["dropped_invalid"] == len(replies)
        # a response topic outside reply/ is refused: the manager publishes nowhere else
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topics.EVENT.format(ROOT, aggregate="job", type="JobSucceeded")
        before = server.stats["dropped_invalid"]
        await client.publish(f"{ROOT}/req/echo", client.envelope("request.echo", {"x": 1}), properties=props)
        await assert_eventually(lambda: server.stats["dropped_invalid"] == before + 1)
    assert len(logged("bus.dropped")) == server.stats["dropped_invalid"]


async def test_a_poison_topic_parameter_is_dropped_with_one_warning(mqtt_broker, logged):
    """`nodes/<201 chars>/status` with a well-formed envelope never reaches the handler (whose
    ids would overflow every envelope built from them): dropped, counted, logged once."""
    seen: list[str] = []

    async def on_status(message: Message) -> None:
        seen.append(message.params["node"])

    sub = Bus(mqtt_broker.url)
    sub.subscribe(topics.NODE_STATUS, on_status)
    async with sub, Bus(mqtt_broker.url) as pub:
        poison = "n" * 201
        await pub.publish(f"{ROOT}/nodes/{poison}/status", pub.envelope("NodeStatus", {"node": poison, "status": "online"}), retain=True)
        await pub.publish(f"{ROOT}/nodes/bad node/status", pub.envelope("NodeStatus", {"node": "bad node", "status": "online"}))
        await pub.publish(topics.NODE_STATUS.format(ROOT, node="n1"), pub.envelope("NodeStatus", {"node": "n1", "status": "online"}))
        await assert_eventually(lambda: seen == ["n1"] and sub.stats["dropped_invalid"] == 2)
        await pub.publish(f"{ROOT}/nodes/{poison}/status", b"", retain=True)  # clear the retained poison
    warnings = logged("bus.dropped")
    assert len(warnings) == 2 and all("topic parameter node" in line["reason"] for line in warnings), warnings


async def test_a_handler_bug_is_logged_with_its_traceback_not_counted_as_invalid(mqtt_broker, logged):
    """Only what fails inside `inbound()` is the payload's fault; any other ValueError is a bug."""

    async def on_status(message: Message) -> None:
        with inbound():
            node = message.body.data["node"]
            if node == "bad":
                raise ValueError("status of node 'bad' is not acceptable")
        if node == "buggy":
            raise ValueError("domain bug")

    sub = Bus(mqtt_broker.url)
    sub.subscribe(topics.NODE_STATUS, on_status)
    async with sub, Bus(mqtt_broker.url) as pub:
        for node in ("bad", "buggy", "fine"):
            await pub.publish(topics.NODE_STATUS.format(ROOT, node=node), pub.envelope("NodeStatus", {"node": node}))
        await assert_eventually(lambda: sum(sub.stats.values()) == 3)
        assert (sub.stats["dropped_invalid"], sub.stats["handler_errors"], sub.stats["handled"]) == (1, 1, 1)
    [bug] = logged("bus.handler_error")
    assert "Traceback" in bug["exception"] and "domain bug" in bug["exception"]
    [dropped] = logged("bus.dropped")
    assert "'bad' is not acceptable" in dropped["reason"]


async def test_malformed_payloads_are_counted_and_dropped(mqtt_broker):
    seen: list[Message] = []

    async def on_status(message: Message) -> None:
        seen.append(message)

    async with Bus(mqtt_broker.url) as sub, Bus(mqtt_broker.url) as pub:
        sub.subscribe(topics.NODE_STATUS, on_status)
        await asyncio.sleep(0)  # let the subscription task run
        await assert_eventually(lambda: sub.connected)
        topic = topics.NODE_STATUS.format("ember/v1", node="n1")
        # the subscription is asynchronous: publish a valid one until it is seen
        async def delivered():
            await pub.publish(topic, pub.envelope("NodeStatus", {"node": "n1", "status": "online"}))
            return seen
        await assert_eventually(delivered, timeout=5, interval=0.1)
        seen.clear()
        for junk in (b"not json", b'{"type": "x", "v": 2}', b'{"id": "1"}', b"\x00" * 1_000_000):
            await pub.publish(topic, junk)
        await pub.publish(topic, pub.envelope("NodeStatus", {"node": "n1", "status": "offline"}))
        await assert_eventually(lambda: len(seen) == 1 and sub.stats["dropped_invalid"] == 4)
        assert seen[0].params == {"node": "n1"}


async def test_a_dozen_subscriptions_on_a_connected_bus_all_deliver_without_warnings(mqtt_broker, caplog):
    """Registering many topics in a row on a connected bus (as `ember job watch` does) subscribes
    them in one go: every one delivers, and aiomqtt does not warn about pending calls."""
    import logging

    seen: set[str] = set()

    async def on_status(message: Message) -> None:
        seen.add(message.params["node"])

    nodes = [f"n{i}" for i in range(15)]
    caplog.set_level(logging.WARNING)
    async with Bus(mqtt_broker.url) as sub, Bus(mqtt_broker.url) as pub:
        await assert_eventually(lambda: sub.connected)
        for node in nodes:
            sub.subscribe(topics.NODE_STATUS, on_status, node=node)

        async def delivered():
            for node in sorted(set(nodes) - seen):
                await pub.publish(topics.NODE_STATUS.format("ember/v1", node=node), pub.envelope("NodeStatus", {"node": node, "status": "online"}))
            return seen == set(nodes)

        await assert_eventually(delivered, timeout=10, interval=0.1)
    assert not [r for r in caplog.records if "pending" in r.getMessage()]


async def test_reconnects_after_broker_restart(mqtt_broker):
    got: list[str] = []

    async def on_data(message: Message) -> None:
        got.append(message.envelope.id)

    sub = Bus(mqtt_broker.url, client_id="persistent-sub", persistent=True)
    sub.subscribe(topics.DATA, on_data, tag="t")
    async with sub, Bus(mqtt_broker.url) as pub:
        topic = topics.DATA.format("ember/v1", tag="t")
        await pub.publish(topic, pub.envelope("SensorReadings", {}, id="before"))
        await assert_eventually(lambda: "before" in got)
        mqtt_broker.restart()
        await assert_eventually(lambda: not sub.connected, timeout=10)
        # Mosquitto 2.0 may not deliver to a persistent subscriber what was published between its
        # restart and the subscriber's reconnect, so publish once the subscriber is back
        # (connected means its subscriptions are renewed).
        await assert_eventually(lambda: sub.connected, timeout=10)
        await pub.publish(topic, pub.envelope("SensorReadings", {}, id="after"), timeout=15)
        await assert_eventually(lambda: "after" in got, timeout=15)


async def test_packets_are_written_at_once_and_large_ones_still_arrive_whole(mqtt_broker):
    """A publish on the loop's thread leaves nothing queued for the loop's writer (it went out
    at once); a payload larger than the socket's send buffer falls back to the writer and still
    arrives whole; a burst of concurrent publishes arrives complete and in order."""
    got: list[bytes] = []

    async def on_data(message: Message) -> None:
        got.append(message.payload)

    sub = Bus(mqtt_broker.url)
    sub.subscribe(topics.DATA, on_data, raw=True, tag="t")
    async with sub, Bus(mqtt_broker.url) as pub:
        topic = topics.DATA.format("ember/v1", tag="t")
        paho = paho_client(pub._client)
        loop = asyncio.get_running_loop()
        paho.publish(topic, b"first", qos=1)  # what aiomqtt's publish does first
        assert not paho.want_write(), "the packet waited for the loop's writable event"
        assert paho.socket().fileno() not in {key.fd for key in loop._selector.get_map().values() if key.events & 2}
        await assert_eventually(lambda: got == [b"first"])

        big = bytes(range(256)) * (16 * 1024 * 1024 // 256)  # 16 MiB, far more than a send buffer
        await pub.publish(topic, big, timeout=30)
        await assert_eventually(lambda: len(got) == 2, timeout=20)
        assert got[1] == big

        burst = [f"m{i}".encode() for i in range(300)]
        await asyncio.gather(*(pub.publish(topic, payload) for payload in burst))
        await assert_eventually(lambda: len(got) == 302, timeout=20)
        assert got[2:] == burst


async def test_a_connection_that_breaks_under_a_write_reconnects_and_delivers(mqtt_broker, caplog):
    """A packet written at once into a connection that just broke: the bus reconnects (no error
    left in the event loop's callbacks) and the next publish is delivered."""
    import logging
    import socket as socketlib

    got: list[bytes] = []

    async def on_data(message: Message) -> None:
        got.append(message.payload)

    caplog.set_level(logging.ERROR, logger="asyncio")
    sub = Bus(mqtt_broker.url)
    sub.subscribe(topics.DATA, on_data, raw=True, tag="t")
    async with sub, Bus(mqtt_broker.url) as pub:
        topic = topics.DATA.format("ember/v1", tag="t")
        await pub.publish(topic, b"before")
        await assert_eventually(lambda: got == [b"before"])
        first = pub._client
        paho_client(first).socket().shutdown(socketlib.SHUT_RDWR)  # the connection breaks under the next write
        with contextlib.suppress(Exception):
            paho_client(first).publish(topic, b"lost", qos=1)
        await assert_eventually(lambda: pub.connected and pub._client is not first, timeout=10, message="the bus never reconnected")
        await pub.publish(topic, b"after")
        await assert_eventually(lambda: got[-1:] == [b"after"], timeout=10)
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]


OPTIMIZED_ROUND_TRIP = """
import asyncio, sys
from ember.actions import Action, Payload
from ember.bus import Bus
from ember.errors import InvalidRequest

class Ping(Payload):
    n: int

async def main(url):
    async def pong(request, _envelope):
        return {"n": request.n + 1}
    server = Bus(url, client_id="o-server")
    server.serve(Action("ping", Ping, Ping, "ping"), pong)
    async with server, Bus(url) as client:
        await client.publish("ember/v1/req/ping", b"junk")
        if await client.request("ping", {"n": 1}) != {"n": 2}:
            sys.exit("wrong reply")
        try:
            await client.request("ping", {})
        except InvalidRequest:
            pass
        else:
            sys.exit("no error reply")
    print("ok", dict(server.stats))

asyncio.run(main(sys.argv[1]))
"""


def test_the_bus_works_under_python_O(mqtt_broker):
    """`python -O` strips asserts: nothing in the bus's control flow may depend on them."""
    result = subprocess.run([sys.executable, "-O", "-c", OPTIMIZED_ROUND_TRIP, mqtt_broker.url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok") and "'dropped_invalid': 2" in result.stdout, result.stdout
