"""The broker's ACL, generated from the topic map (`ember.topics`) so it cannot drift from the code.

Least privilege, one block per principal (Mosquitto denies whatever no line grants):

- manager: reads requests, node reports and job progress; writes replies and every event.
- builder, notifier: read events; write only the event types they append (`EVENT_WRITERS`); the
  notifier alone writes `nodes/+/desired`; the builder reads, publishes and clears `bundles/+`.
- node N (its flamelet and mldata): writes only `nodes/N/...`, reads only its own desired state,
  the data addressed to it and code bundles (by digest, verified on fetch).
- devices of node N: write only node N's data topics.
- operator: every request and publishing code bundles (before `jobs.submit`); viewer: only the
  requests that change nothing (`READ_ONLY_ACTIONS`);
  both read events, node reports and progress (not desired states, data or Flower frames).
- an actor of job J: the aggregator writes progress, `fl/+/down` and the cast topic of J and
  reads J's `fl/+/up`; learner A writes only `jobs/J/fl/A/up` and reads its down and the cast.
- everyone reads replies addressed to its own client id (`pattern read .../reply/%c`).

Node names go into explicit `user` blocks, never `pattern ... %u` lines: a pattern applies to every
username, so `nodes/%u/...` would let any principal (a viewer `alice`) announce a node `alice`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ember import topics
from ember.actions import ACTIONS as REQUESTS
from ember.events import ActorsPlaced, BuildFailed, BuildStarted, BuildSucceeded, Event, JobFailed, Role
from ember.security.identities import Identity, Kind, UserRole

MUTATING_ACTIONS = frozenset({"jobs.submit", "jobs.cancel"})
READ_ONLY_ACTIONS = tuple(action for action in REQUESTS if action not in MUTATING_ACTIONS)

EVENT_WRITERS: dict[str, tuple[type[Event], ...]] = {
    "builder": (BuildStarted, BuildSucceeded, BuildFailed, JobFailed),
    "notifier": (ActorsPlaced, JobFailed),
}
"""The event types each control-plane service other than the manager appends (and so publishes)."""


@dataclass(frozen=True)
class Rule:
    access: str
    """`read`, `write` or `readwrite` (Mosquitto's words)."""
    topic: str
    template: topics.TopicTemplate


@dataclass(frozen=True)
class Policy:
    """Who may do what, in terms of the topic templates. The templates are fields so a test can
    check the policy against another topic map (e.g. data topics with a node level)."""

    root: str = "ember/v1"
    request: topics.TopicTemplate = topics.REQUEST
    reply: topics.TopicTemplate = topics.REPLY
    event: topics.TopicTemplate = topics.EVENT
    node_info: topics.TopicTemplate = topics.NODE_INFO
    node_status: topics.TopicTemplate = topics.NODE_STATUS
    node_desired: topics.TopicTemplate = topics.NODE_DESIRED
    actor_state: topics.TopicTemplate = topics.ACTOR_STATE
    actor_log: topics.TopicTemplate = topics.ACTOR_LOG
    job_progress: topics.TopicTemplate = topics.JOB_PROGRESS
    fl_down: topics.TopicTemplate = topics.FL_DOWN
    fl_cast: topics.TopicTemplate = topics.FL_CAST
    fl_up: topics.TopicTemplate = topics.FL_UP
    data: topics.TopicTemplate = topics.DATA
    bundle: topics.TopicTemplate = topics.BUNDLE
    actors_as_node: bool = False
    """Transitional: actors connect with their node's identity (no per-job credentials yet), so a
    node may also use every job's actor topics (`_actor_rules` with `job=+`). Off: least privilege."""
    everyone: tuple[Rule, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "everyone", (self._rule("read", self.reply, client="%c"),))

    @property
    def templates(self) -> tuple[topics.TopicTemplate, ...]:
        return (
            self.request, self.reply, self.event, self.node_info, self.node_status, self.node_desired, self.actor_state,
            self.actor_log, self.job_progress, self.fl_down, self.fl_cast, self.fl_up, self.data, self.bundle,
        )  # fmt: skip

    @property
    def data_has_node(self) -> bool:
        """Whether data topics name their node (so a fleet and an mldata are scoped to one node)."""
        return "node" in self.data.params

    def _rule(self, access: str, template: topics.TopicTemplate, **fixed: str) -> Rule:
        fixed = {name: value for name, value in fixed.items() if name in template.params}
        return Rule(access, template.wildcard(self.root, **fixed), template)

    def _reports(self, access: str) -> list[Rule]:
        return [
            self._rule(access, t)
            for t in (self.event, self.node_info, self.node_status, self.actor_state, self.actor_log, self.job_progress)
        ]

    def rules(self, identity: Identity) -> list[Rule]:
        """What `identity` may read and write, beyond `everyone`."""
        r = self._rule
        node = identity.node
        match identity.kind:
            case Kind.service if identity.name == "manager":
                return [
                    r("read", self.request), r("write", self.reply), r("readwrite", self.event),
                    r("read", self.node_info), r("read", self.node_status), r("read", self.actor_state), r("read", self.job_progress),
                ]  # fmt: skip
            case Kind.service:
                own = [
                    r("write", self.event, aggregate=e.aggregate, type=e.__name__) for e in EVENT_WRITERS.get(identity.name, ())
                ]
                if identity.name == "notifier":
                    own += [r("read", self.node_info), r("read", self.node_status), r("write", self.node_desired)]
                if identity.name == "builder":
                    own += [r("readwrite", self.bundle)]
                return [r("read", self.event), *own]
            case Kind.node if self.actors_as_node:
                return [*self._node_rules(node), *self._actor_rules(Role.AGGREGATOR), *self._actor_rules(Role.LEARNER)]
            case Kind.node:
                return self._node_rules(node)
            case Kind.devices:
                return [r("write", self.data, node=node)]
            case Kind.user if identity.role == UserRole.operator:
                return [r("write", self.request), r("write", self.bundle), *self._reports("read")]
            case Kind.user:
                return [*(r("write", self.request, action=a) for a in READ_ONLY_ACTIONS), *self._reports("read")]
            case Kind.actor:
                return self._actor_rules(identity.role, job=identity.job, actor=identity.actor)
        return []

    def _node_rules(self, node: str) -> list[Rule]:
        r = self._rule
        return [
            r("write", self.node_info, node=node), r("write", self.node_status, node=node),
            r("write", self.actor_state, node=node), r("write", self.actor_log, node=node),
            r("read", self.node_desired, node=node), r("read", self.data, node=node), r("read", self.bundle),
        ]  # fmt: skip

    def _actor_rules(self, role: str, **fixed: str) -> list[Rule]:
        """An aggregator writes its job's progress, down and cast topics and reads its learners'
        up topics; a learner writes its own up topic and reads its down topic and the cast."""
        r = self._rule
        job, actor = fixed.get("job", "+"), fixed.get("actor", "+")
        if role == Role.AGGREGATOR:
            return [
                r("write", self.job_progress, job=job), r("write", self.fl_down, job=job),
                r("write", self.fl_cast, job=job), r("read", self.fl_up, job=job),
            ]  # fmt: skip
        return [
            r("write", self.fl_up, job=job, actor=actor),
            r("read", self.fl_down, job=job, actor=actor),
            r("read", self.fl_cast, job=job),
        ]

    def render(self, identities: Iterable[Identity]) -> str:
        """The Mosquitto ACL file for `identities`."""
        lines = [
            "# Generated by `ember provision` from ember.topics (ember.security.acl): do not edit, re-run it.",
            "# Whatever no line grants is denied. Patterns apply to every user; %c is the client id.",
            *(f"pattern {rule.access} {rule.topic}" for rule in self.everyone),
        ]
        for identity in sorted(identities, key=lambda i: (i.kind, i.name)):
            lines += ["", f"# {identity.kind}" + (f" {identity.role}" if identity.role else ""), f"user {identity.username}"]
            lines += [f"topic {rule.access} {rule.topic}" for rule in self.rules(identity)]
        return "\n".join(lines) + "\n"


def examples() -> list[Identity]:
    """One principal of each kind (for the table in docs/security.md and for tests)."""
    return [
        *(Identity(name=service, kind=Kind.service, password="-") for service in ("manager", "builder", "notifier")),
        Identity(name="node-1", kind=Kind.node, node="node-1", password="-"),
        Identity(name="devices-node-1", kind=Kind.devices, node="node-1", password="-"),
        Identity(name="alice", kind=Kind.user, role=UserRole.operator.value, password="-"),
        Identity(name="bob", kind=Kind.user, role=UserRole.viewer.value, password="-"),
        Identity(
            name="job-J-J-aggregator", kind=Kind.actor, job="J", actor="J-aggregator", role=Role.AGGREGATOR.value, password="-"
        ),
        Identity(name="job-J-J-learner-0", kind=Kind.actor, job="J", actor="J-learner-0", role=Role.LEARNER.value, password="-"),
    ]


def markdown(policy: Policy, identities: Iterable[Identity]) -> str:
    """The ACL as a Markdown table, topics relative to the root: `python -m ember.security.acl`."""
    rows = ["| principal | kind | may publish | may subscribe |", "|---|---|---|---|"]
    cut = len(policy.root) + 1
    for identity in identities:
        rules = policy.rules(identity)
        cells = ["<br>".join(f"`{r.topic[cut:]}`" for r in rules if want in r.access) or "-" for want in ("write", "read")]
        kind = f"{identity.kind}" + (f" ({identity.role})" if identity.role else "")
        rows.append(f"| {identity.name} | {kind} | {cells[0]} | {cells[1]} |")
    everyone = ", ".join(f"`{r.topic[cut:]}`" for r in policy.everyone)
    rows.append(f"| everyone | pattern | - | {everyone} (`%c`: the client's own id) |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(Policy(), examples()), end="")
