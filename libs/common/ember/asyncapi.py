"""The AsyncAPI 3.0 document of Ember's bus, generated from `ember.topics.ALL`, the actions the
manager serves (`ember.actions.ACTIONS`, the registry `Bus.serve` takes its models from) and the
pydantic models of events and node topics.

Every channel is one topic template (`nodes/{node}/desired`) with its parameters; every message is
the envelope (`ember.envelope.Envelope`) whose `type` and `data` are pinned to one payload model:
`request.<action>` on `req/{action}`, `reply` (one message per action, told apart by the request's
correlation data) on `reply/{client}`, the class name elsewhere. Flower frames
(`jobs/{job}/fl/...`) are the only payloads that are not envelopes.

    doc = build_document()               # a plain dict
    text = render(doc, "yaml")           # or "json"
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.json_schema import models_json_schema

from ember import events, topics
from ember.actions import ACTIONS, REPLY_TYPE, Action, Failure
from ember.envelope import ENVELOPE_VERSION, Envelope

REF = "#/components/schemas/{model}"


class SensorReadings(BaseModel):
    """A batch of one device's readings (columns of `ember.devices.sensors.READING_SCHEMA`)."""

    model_config = ConfigDict(extra="forbid")

    readings: list[dict[str, Any]]


# Payload models carried by each channel (the envelope `type` is the model's class name, except
# requests and replies, which come from `ember.actions`). Channels missing here carry raw bytes.
PAYLOADS: dict[topics.TopicTemplate, list[type[BaseModel]]] = {
    topics.EVENT: list(events.Event.registry.values()),
    topics.NODE_INFO: [events.NodeInfo],
    topics.NODE_STATUS: [events.NodeStatus],
    topics.NODE_DESIRED: [events.DesiredState],
    topics.ACTOR_STATE: [events.ActorReport],
    topics.ACTOR_LOG: [events.ActorLogLines],
    topics.JOB_PROGRESS: [events.RoundCompleted, events.CheckpointSaved, events.JobResult],
    topics.JOB_PLACEMENT: [events.JobPlacement],
    topics.SERVING: [events.ServingStatus],
    topics.DATA: [SensorReadings],
}

# Who publishes (`send`) and who subscribes (`receive`), from the point of view of Ember's services.
ROLES: dict[topics.TopicTemplate, tuple[str, str]] = {
    topics.REQUEST: ("any client (ember CLI)", "manager"),
    topics.REPLY: ("manager", "the requesting client"),
    topics.EVENT: ("manager, builder, notifier (after appending to the event log)", "manager, builder, notifier, ember CLI"),
    topics.NODE_INFO: ("flamelet (retained)", "manager, notifier"),
    topics.NODE_STATUS: ("flamelet (retained, Last Will = offline)", "manager, notifier"),
    topics.NODE_DESIRED: ("notifier (retained)", "flamelet of that node"),
    topics.ACTOR_STATE: ("flamelet (retained)", "manager"),
    topics.ACTOR_LOG: ("flamelet", "ember CLI (job logs --follow)"),
    topics.JOB_PROGRESS: ("aggregator actor", "manager"),
    topics.JOB_PLACEMENT: ("notifier (retained)", "the job's actors"),
    topics.FL_DOWN: ("aggregator actor", "learner actor"),
    topics.FL_CAST: ("aggregator actor", "every learner actor of the job"),
    topics.FL_UP: ("learner actor", "aggregator actor"),
    topics.PREDICTIONS: ("serving actor", "any client (a factory line's consumers)"),
    topics.SERVING: ("serving actor (retained; its Last Will clears it)", "manager"),
    topics.DATA: ("edge devices", "mldata, serving actors scoring that tag"),
    topics.BUNDLE: ("ember CLI before jobs.submit, builder for git sources (retained; cleared by the builder)", "builder, process-runtime flamelets"),
}

PARAM_DOC = {
    "action": "request name",
    "client": "MQTT client id of the requester",
    "aggregate": "event stream: job, node or serving",
    "type": "event type (class name)",
    "node": "node id, e.g. node-1",
    "actor": "actor id",
    "job": "job id, `{name}-{8 hex}`",
    "tag": "data tag",
    "model": "registered model name",
    "digest": "code bundle digest, `sha256:<64 hex>`",
}


def channel_id(template: topics.TopicTemplate) -> str:
    """`nodes/{node}/actors/{actor}/state` -> `nodesActorsState`."""
    words = [w for w in template.pattern.split("/") if not w.startswith("{")]
    words = [re.sub(r"[^A-Za-z0-9]", "", w) for w in words]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def _parameters(template: topics.TopicTemplate) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in template.params:
        param: dict[str, Any] = {"description": PARAM_DOC.get(name, name)}
        if template is topics.REQUEST and name == "action":
            param["enum"] = list(ACTIONS)
        elif template is topics.EVENT and name == "aggregate":
            param["enum"] = sorted({cls.aggregate for cls in events.Event.registry.values()})
        elif template is topics.EVENT and name == "type":
            param["enum"] = list(events.Event.registry)
        params[name] = param
    return params


def _envelope_message(type_name: str, data: dict[str, Any], summary: str, name: str | None = None) -> dict[str, Any]:
    payload = {
        "allOf": [
            {"$ref": REF.format(model="Envelope")},
            {"type": "object", "properties": {"type": {"const": type_name}, "data": data}},
        ]
    }
    name = name or type_name
    return {"name": name, "title": name, "summary": summary, "contentType": "application/json", "payload": payload}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _result_schema(action: Action[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of the action's result, the component schemas it refers to)."""
    schema = TypeAdapter(action.reply).json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    if isinstance(action.reply, type) and issubclass(action.reply, BaseModel):
        defs[action.reply.__name__] = schema
        schema = _ref(action.reply)
    return schema, defs


def _reply_data(action: Action[Any]) -> dict[str, Any]:
    """`{"ok": true, "result": <reply model>}` or `{"ok": false, "error": ...}` (`Failure`)."""
    result, _ = _result_schema(action)
    success = {
        "type": "object",
        "properties": {"ok": {"const": True}, "result": result},
        "required": ["ok", "result"],
        "additionalProperties": False,
    }
    return {"oneOf": [success, _ref(Failure)]}


def _messages(template: topics.TopicTemplate) -> dict[str, Any]:
    if template is topics.REQUEST:
        return {
            f"request.{name}": _envelope_message(f"request.{name}", _ref(action.request), action.summary)
            for name, action in ACTIONS.items()
        }
    if template is topics.REPLY:
        return {
            f"reply.{name}": _envelope_message(REPLY_TYPE, _reply_data(action), f"reply to {name}", name=f"reply.{name}")
            for name, action in ACTIONS.items()
        }
    models = PAYLOADS.get(template)
    if models is None:  # Flower frames: Flower's protobuf serialisation, chunked when large
        return {
            "FlowerFrame": {
                "name": "FlowerFrame",
                "summary": "a Flower message (protobuf), chunked when large; not an envelope",
                "contentType": "application/octet-stream",
                "payload": {"type": "string", "format": "binary"},
            }
        }
    return {m.__name__: _envelope_message(m.__name__, _ref(m), (m.__doc__ or m.__name__).strip().splitlines()[0]) for m in models}


def _schemas() -> dict[str, Any]:
    requests: list[type[BaseModel]] = [action.request for action in ACTIONS.values()]
    models: list[type[BaseModel]] = [Envelope, Failure, *requests, *(m for ms in PAYLOADS.values() for m in ms)]
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema([(m, "validation") for m in unique], ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    for model in unique:  # a model referenced by nobody is inlined under its own name
        schemas.setdefault(model.__name__, refs[(model, "validation")])
    for action in ACTIONS.values():
        for name, schema in _result_schema(action)[1].items():
            schemas.setdefault(name, schema)
    return schemas


def build_document(root: str = "ember/v1", *, server: str = "127.0.0.1:1883") -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as a JSON-compatible dict."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for template in topics.ALL:
        cid = channel_id(template)
        messages = _messages(template)
        channels[cid] = {
            "address": f"{root}/{template.pattern}",
            "title": template.pattern,
            "description": template.description,
            "parameters": _parameters(template),
            "messages": messages,
        }
        publisher, subscriber = ROLES.get(template, ("", ""))
        refs = [{"$ref": f"#/channels/{cid}/messages/{name}"} for name in messages]
        for action, who in (("send", publisher), ("receive", subscriber)):
            operations[f"{action}{cid[:1].upper()}{cid[1:]}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{cid}"},
                "summary": f"{who} {'publishes' if action == 'send' else 'subscribes'}",
                "messages": refs,
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ember control and data plane",
            "version": f"envelope v{ENVELOPE_VERSION}",
            "description": (
                "Every topic and payload of Ember's MQTT bus. Payloads are JSON envelopes "
                "`{id, type, time, source, subject, data, v}` whose `data` matches the message's model; "
                "requests use MQTT 5 response topic (under `reply/`) + correlation data, and an invalid "
                "request or an unknown action gets an `invalid_request` error reply; QoS 1 throughout."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": server,
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "the private Mosquitto started by `ember up` (address in $EMBER_HOME/broker.json)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas()},
    }


def render(document: dict[str, Any], fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The document as YAML (default) or JSON text."""
    if fmt == "json":
        return json.dumps(document, indent=2, default=str) + "\n"
    return yaml.safe_dump(json.loads(json.dumps(document, default=str)), sort_keys=False, width=120)
