"""The topic map, declared once. Subscriptions and parsers come from the same template.

Every topic lives under a root (`ember/v1` by default, `Settings.topic_root`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_PARAM_LENGTH = 128
PARAM_PATTERN = rf"^[A-Za-z0-9_.:@=+-]{{1,{MAX_PARAM_LENGTH}}}$"
"""What one topic parameter (a node, job, actor, tag, action or client id) may hold: an id, not
free text, short enough that every id and event id built from it stays within the envelope's bounds."""
_PARAM_RE = re.compile(PARAM_PATTERN)


def invalid_param(params: dict[str, str]) -> str | None:
    """Why one of `params` is not an acceptable topic parameter, or None when all are."""
    for name, value in params.items():
        if not _PARAM_RE.fullmatch(value):
            shown = value[:40] + ("..." if len(value) > 40 else "")
            return f"topic parameter {name} {shown!r} ({len(value)} chars) is not 1-{MAX_PARAM_LENGTH} of [A-Za-z0-9_.:@=+-]"
    return None


@dataclass(frozen=True)
class TopicTemplate:
    """A topic with `{named}` single-level parameters, e.g. `nodes/{node}/desired`."""

    pattern: str
    description: str = ""
    params: tuple[str, ...] = field(init=False)
    levels: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(re.findall(r"{(\w+)}", self.pattern)))
        object.__setattr__(self, "levels", tuple(self.pattern.split("/")))

    def format(self, root: str, **params: str) -> str:
        for name, value in params.items():
            if not value or any(c in str(value) for c in "/+#\x00"):
                raise ValueError(f"invalid value {value!r} for topic parameter {name!r}")
        return f"{root}/{self.pattern.format(**params)}"

    def wildcard(self, root: str, **fixed: str) -> str:
        """Subscription filter: unspecified parameters become `+`."""
        values = {name: fixed.get(name, "+") for name in self.params}
        return f"{root}/{self.pattern.format(**values)}"

    def match(self, root: str, topic: str) -> dict[str, str] | None:
        """The parameters of `topic` if it is one of this template's topics under `root`, else None
        (runs for every message a service receives: level by level, no regex)."""
        if not topic.startswith(root) or topic[len(root) : len(root) + 1] != "/":
            return None
        levels = topic[len(root) + 1 :].split("/")
        if len(levels) != len(self.levels):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.levels, levels, strict=True):
            if want[:1] == "{":
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


REQUEST = TopicTemplate("req/{action}", "requests to the manager (MQTT 5 response topic + correlation data)")
REPLY = TopicTemplate("reply/{client}", "replies to one client's requests")
EVENT = TopicTemplate("events/{aggregate}/{type}", "domain events, published after they are in the event log")
NODE_INFO = TopicTemplate("nodes/{node}/info", "retained node capabilities")
NODE_STATUS = TopicTemplate("nodes/{node}/status", "retained online/offline; the Last Will flips it to offline")
NODE_DESIRED = TopicTemplate("nodes/{node}/desired", "retained desired state of a node, from the notifier")
ACTOR_STATE = TopicTemplate("nodes/{node}/actors/{actor}/state", "retained actor state reported by its flamelet")
ACTOR_LOG = TopicTemplate("nodes/{node}/actors/{actor}/log", "tail of an actor's log")
JOB_PROGRESS = TopicTemplate("jobs/{job}/progress", "training progress (RoundCompleted) from the aggregator")
FL_DOWN = TopicTemplate("jobs/{job}/fl/{actor}/down", "Flower messages aggregator -> learner")
FL_CAST = TopicTemplate("jobs/{job}/fl/cast", "Flower messages aggregator -> every learner: one shared content, each learner's own metadata")
FL_UP = TopicTemplate("jobs/{job}/fl/{actor}/up", "Flower messages learner -> aggregator")
DATA = TopicTemplate("data/{tag}", "sensor readings from edge devices")
BUNDLE = TopicTemplate("bundles/{digest}", "retained code bundle (gzip tar) named by its `sha256:<hex>` digest; cleared when no live job uses it")

ALL = (REQUEST, REPLY, EVENT, NODE_INFO, NODE_STATUS, NODE_DESIRED, ACTOR_STATE, ACTOR_LOG, JOB_PROGRESS, FL_DOWN, FL_CAST, FL_UP, DATA, BUNDLE)
