"""The AsyncAPI document tells the truth about the bus.

Every action the manager serves is in the document with the models it validates against, and every
message seen on the wire while a client talks to a real manager (requests, replies, errors, the
events and node reports around them) validates against the document's schemas. jsonschema is not
installed here, so `SchemaCheck` below checks the subset of JSON Schema the pydantic-generated
document uses (refs, allOf/oneOf/anyOf, types, properties, required, additionalProperties, items,
const, enum, bounds, patterns, date-times).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from ember import topics
from ember.actions import Action, NoArguments, Submitted
from ember.asyncapi import build_document
from ember.bus import Bus, Message
from ember.envelope import decode
from ember.errors import InvalidRequest, NotFound
from ember.events import NodeInfo, NodeStatus
from ember.manager.app import ManagerService
from ember.manager.settings import ManagerSettings
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)

ROOT = "ember/v1"
SPEC = {"name": "probe", "probe": {"seconds": 1}, "learners": {"count": 2, "min": 2}}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


class SchemaCheck:
    """Validate JSON values against the document's schemas; `errors(value, schema)` says why not."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas = document["components"]["schemas"]

    def errors(self, value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.errors(value, self.schemas[schema["$ref"].rsplit("/", 1)[-1]], at)
        out: list[str] = []
        for part in schema.get("allOf", []):
            out += self.errors(value, part, at)
        if "oneOf" in schema:
            matching = [s for s in schema["oneOf"] if not self.errors(value, s, at)]
            if len(matching) != 1:
                out.append(f"{at}: matches {len(matching)} of oneOf")
        if "anyOf" in schema and not any(not self.errors(value, s, at) for s in schema["anyOf"]):
            out.append(f"{at}: matches nothing in anyOf")
        if "const" in schema and value != schema["const"]:
            out.append(f"{at}: {value!r} is not {schema['const']!r}")
        if "enum" in schema and value not in schema["enum"]:
            out.append(f"{at}: {value!r} not in {schema['enum']}")
        if "type" in schema and not self._is(value, schema["type"]):
            return [*out, f"{at}: {value!r} is not of type {schema['type']}"]
        if isinstance(value, dict):
            out += self._object(value, schema, at)
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                out += self.errors(item, schema["items"], f"{at}[{i}]")
        elif isinstance(value, str):
            out += self._string(value, schema, at)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
                out.append(f"{at}: {value} out of bounds")
        return out

    @staticmethod
    def _is(value: Any, kind: str) -> bool:
        if kind == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, TYPES[kind])

    def _object(self, value: dict[str, Any], schema: dict[str, Any], at: str) -> list[str]:
        out = [f"{at}: missing {name}" for name in schema.get("required", []) if name not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                out += self.errors(item, properties[key], f"{at}.{key}")
            elif extra is False and ("properties" in schema):
                out.append(f"{at}: unexpected {key}")
            elif isinstance(extra, dict):
                out += self.errors(item, extra, f"{at}.{key}")
        return out

    @staticmethod
    def _string(value: str, schema: dict[str, Any], at: str) -> list[str]:
        out = []
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            out.append(f"{at}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{at}: {value[:50]!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                out.append(f"{at}: {value!r} is not a date-time")
        return out


def channel_of(document: dict[str, Any], topic: str) -> dict[str, Any]:
    for channel in document["channels"].values():
        pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(channel["address"]))
        if re.fullmatch(pattern, topic):
            return channel
    raise AssertionError(f"no channel in the document for {topic}")


def undocumented(bus: Bus, document: dict[str, Any]) -> list[str]:
    """Served actions the document lacks, or documents with other request models than the bus uses."""
    messages = channel_of(document, f"{ROOT}/req/x")["messages"]
    replies = channel_of(document, f"{ROOT}/reply/x")["messages"]
    out = []
    for name, (action, _handler) in bus.served.items():
        message = messages.get(f"request.{name}")
        data = message["payload"]["allOf"][1]["properties"]["data"] if message else {}
        if data.get("$ref", "").rsplit("/", 1)[-1] != action.request.__name__ or f"reply.{name}" not in replies:
            out.append(name)
    return out


@pytest.fixture
async def manager(mqtt_broker, ember_home):
    settings = ManagerSettings.from_env({"EMBER_HOME": str(ember_home), "EMBER_MQTT_URL": mqtt_broker.url})
    async with ManagerService(settings) as service:
        yield service


async def test_every_served_action_is_in_the_document(manager) -> None:
    document = build_document(ROOT)
    assert manager.bus is not None
    assert set(manager.bus.served) == {"jobs.submit", "jobs.cancel", "jobs.get", "jobs.list", "nodes.list"}
    assert undocumented(manager.bus, document) == []
    # ... and the check does catch an action served but not declared in ember.actions
    extra = Bus("mqtt://127.0.0.1:1", client_id="extra")

    async def nothing(_request: NoArguments, _envelope: Any) -> Any:
        return {"job": "x", "state": "submitted"}

    extra.serve(Action("jobs.frobnicate", NoArguments, Submitted, "not declared"), nothing)
    assert undocumented(extra, document) == ["jobs.frobnicate"]


async def test_every_message_on_the_wire_validates_against_the_document(manager, mqtt_broker) -> None:
    document = build_document(ROOT)
    check = SchemaCheck(document)
    seen: list[Message] = []

    async def capture(message: Message) -> None:
        seen.append(message)

    sniffer = Bus(mqtt_broker.url, client_id="sniffer")
    for template in topics.ALL:
        sniffer.subscribe(template, capture, raw=True)
    async with sniffer, Bus(mqtt_broker.url, client_id="client", source="test") as client:
        info = NodeInfo(node="n1", cpus=4, memory_mb=4096, data={"sensors": 10})
        await client.publish(topics.NODE_INFO.format(ROOT, node="n1"), client.envelope("NodeInfo", info.model_dump(mode="json")))
        status = NodeStatus(node="n1", status="online")
        await client.publish(topics.NODE_STATUS.format(ROOT, node="n1"), client.envelope("NodeStatus", status.model_dump(mode="json")))
        job = (await client.request("jobs.submit", {"spec": SPEC, "spec_dir": "/srv/jobs/probe"}))["job"]
        await client.request("jobs.get", {"job": job, "rounds": 1})
        await client.request("jobs.list", {})
        await assert_eventually(lambda: client.request("nodes.list", {}), timeout=10)
        await client.request("jobs.cancel", {"job": job})
        with pytest.raises(NotFound):
            await client.request("jobs.get", {"job": "nope-00000000"})
        # requests the manager refuses, which the document does not allow either
        with pytest.raises(InvalidRequest):
            await client.request("jobs.frobnicate", {}, id="refused-1")
        with pytest.raises(InvalidRequest):
            await client.request("jobs.get", {"rounds": -1}, id="refused-2")

        def kinds() -> set[str]:
            return {f"{m.topic.split('/')[2]}:{decode(m.payload).type}" for m in seen}

        def count(kind: str) -> int:
            return sum(m.topic.startswith(f"{ROOT}/{kind}/") for m in seen)

        wanted = {"events:JobSubmitted", "events:JobCancelled", "events:NodeJoined", "reply:reply", "nodes:NodeInfo"}
        await assert_eventually(lambda: wanted <= kinds() and count("reply") == count("req") >= 8)

    actions = {}
    for message in seen:
        if message.topic.startswith(f"{ROOT}/req/"):
            actions[bytes(message.properties.CorrelationData)] = message.topic.rsplit("/", 1)[-1]
    assert set(actions.values()) == {"jobs.submit", "jobs.get", "jobs.list", "nodes.list", "jobs.cancel", "jobs.frobnicate"}
    for message in seen:
        envelope = decode(message.payload).model_dump(mode="json")
        messages = channel_of(document, message.topic)["messages"]
        if message.topic.startswith(f"{ROOT}/reply/"):  # the reply to the action of its correlation data
            action = actions[bytes(message.properties.CorrelationData)]
            candidates = [messages[f"reply.{action}"]] if f"reply.{action}" in messages else list(messages.values())
        else:
            candidates = list(messages.values())
        problems = [check.errors(envelope, candidate["payload"]) for candidate in candidates]
        if envelope["id"].startswith("refused-"):
            assert all(problems), (message.topic, envelope)
        else:
            assert any(not p for p in problems), (message.topic, envelope, problems)
