"""Fuzzing the services' inbound topics: which topics, as which principal, and what to send.

Used by tests/test_fuzz.py (payloads drawn by hypothesis) and bench/fuzz.py (the long run,
payloads from `random_payload`). Every target is a topic some service subscribes to, published
as the principal the broker's ACL lets publish there, so the payloads reach the services: the
attacker modelled holds one node's, one device fleet's, the operator's or a service's identity.

    for target in targets(operator="alice"):
        await buses[target.principal].publish(f"ember/v1/{target.topic}", random_payload(rng, target))
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass

from pydantic import BaseModel

from ember.actions import ACTIONS
from ember.events import ActorReport, DesiredState, Event, JobResult, NodeInfo, NodeStatus, RoundCompleted, event_streams

@dataclass(frozen=True)
class Target:
    name: str
    """One per subscription: `req/jobs.submit`, `events`, `nodes/node-1/status`..."""
    topics: tuple[str, ...]
    """Topics (relative to the root) the payloads go to, in turn."""
    principal: str
    services: tuple[str, ...]
    """The stack processes subscribed to it."""
    types: tuple[str, ...]
    """Envelope types the subscribers expect (a fuzzed envelope uses one of these, or garbage)."""
    fields: tuple[str, ...]
    """Field names of the expected `data` (a fuzzed envelope mixes them with garbage)."""


def _fields(*models: type[BaseModel]) -> tuple[str, ...]:
    return tuple(sorted({name for model in models for name in model.model_fields}))


def targets(*, node: str = "node-1", operator: str = "operator", job: str = "fuzz-00000000", tag: str = "fuzz") -> list[Target]:
    """Every subscription of the manager, builder, notifier, a flamelet and the mldata, with its
    publisher under the ACL (`node`'s identity for node reports and job progress: the local
    stack lets node identities act for their actors)."""
    requests = [
        Target(f"req/{name}", (f"req/{name}",), operator, ("manager",), (name, "request"), _fields(action.request))
        for name, action in ACTIONS.items()
    ]
    streams = event_streams()
    return [
        *requests,
        Target(
            "events", tuple(f"events/{aggregate}/{type_}" for aggregate, type_ in streams), "manager",
            ("manager", "builder", "notifier"), tuple(type_ for _, type_ in streams), _fields(*Event.registry.values()),
        ),
        Target(f"nodes/{node}/info", (f"nodes/{node}/info",), node, ("manager", "notifier"), ("NodeInfo",), _fields(NodeInfo)),
        Target(f"nodes/{node}/status", (f"nodes/{node}/status",), node, ("manager", "notifier"), ("NodeStatus",), _fields(NodeStatus)),
        Target(
            f"nodes/{node}/actors/+/state", (f"nodes/{node}/actors/{job}-learner-0/state",), node, ("manager",),
            ("ActorReport",), _fields(ActorReport),
        ),
        Target(
            "jobs/+/progress", (f"jobs/{job}/progress",), node, ("manager",),
            ("RoundCompleted", "JobResult"), _fields(RoundCompleted, JobResult),
        ),
        Target(f"nodes/{node}/desired", (f"nodes/{node}/desired",), "notifier", (node,), ("DesiredState",), _fields(DesiredState)),
        Target("data/+", (f"data/{tag}",), f"devices-{node}", ("mldata",), ("SensorReadings",), ("readings",)),
    ]


# --- payloads (stdlib random, for the long run) ----------------------------------------------------


def _text(rng: random.Random, size: int = 12) -> str:
    alphabet = string.printable + "\x00\x1b\u00e9\u2603\U0001f525\ud7ff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randint(0, 9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), rng.uniform(-1e6, 1e6)])
    if kind in (4, 5, 6):
        return _text(rng)
    if kind in (7, 8):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng, 8): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _huge(rng: random.Random) -> object:
    return rng.choice(["x" * rng.choice([201, 5_000, 100_000]), list(range(rng.choice([1_000, 20_000])))])


def _deep(rng: random.Random) -> str:
    depth = rng.choice([64, 1_000, 20_000])
    return "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth


def random_payload(rng: random.Random, target: Target) -> bytes:
    """One payload: random bytes, random JSON, a deeply nested document, or an envelope (the
    expected type or another) whose fields and `data` have wrong types, huge strings, odd numbers
    or deep nesting."""
    kind = rng.randint(0, 9)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 512))
    if kind == 1:
        return json.dumps(_value(rng)).encode()
    if kind == 2:
        return _deep(rng).encode()
    data: dict[str, object] = {}
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(target.fields) if target.fields and rng.random() < 0.8 else _text(rng, 8)
        data[key] = _huge(rng) if rng.random() < 0.1 else _value(rng)
    envelope: dict[str, object] = {
        "id": rng.choice([_text(rng, 40), "0" * 32, 7, None]),
        "type": rng.choice([*target.types, _text(rng)]) if rng.random() < 0.9 else _value(rng),
        "time": rng.choice(["2026-01-01T00:00:00Z", "2099-12-31T23:59:59+00:00", _text(rng), 0]),
        "source": rng.choice(["fuzz", _text(rng, 300)]),
        "subject": rng.choice(["", "fuzz-00000000", _text(rng, 300)]),
        "data": data if rng.random() < 0.85 else _value(rng),
        "v": rng.choice([1, 1, 1, 2, "1", None]),
    }
    for _ in range(rng.randint(0, 1)):
        envelope[rng.choice(list(envelope))] = _value(rng)  # one wrong-typed envelope field
    if rng.random() < 0.05:
        envelope["extra"] = _text(rng)
    text = json.dumps(envelope)
    if kind == 3:  # the data replaced by a deeply nested document
        text = text.replace('"data": ', '"data": ' + _deep(rng) + ', "d": ', 1)
    return text.encode()
