"""Model serving in the control plane: which registered models are served where.

`ModelServeRequested` / `ModelServeStopped` (subject: the model) fold into one `ServingView` per
model; `serving_nodes` says on which nodes it runs now (a pure function of the view and the
online nodes' info), which the notifier turns into `server` actors in the nodes' desired state
and the manager shows in `nodes.list`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ember.events import ModelServeRequested, ModelServeStopped, NodeInfo

SERVER_MODULE = "ember.actors.server"


@dataclass
class ServingView:
    model: str
    version: str = ""
    tag: str = ""
    nodes: set[str] = field(default_factory=set)
    """Nodes named explicitly (`--node`)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Every online node carrying all of these also serves it (none: only `nodes`)."""
    excluded: set[str] = field(default_factory=set)
    """Nodes stopped explicitly, which a label match does not bring back."""

    @property
    def live(self) -> bool:
        return bool(self.nodes or self.labels)


def apply(servings: dict[str, ServingView], event: ModelServeRequested | ModelServeStopped) -> None:
    """Fold one serving event into `servings` (model -> view)."""
    if isinstance(event, ModelServeRequested):
        view = servings.setdefault(event.model, ServingView(event.model))
        view.version, view.tag, view.labels = event.version, event.tag, dict(event.labels)
        view.nodes |= set(event.nodes)
        view.excluded -= set(event.nodes)
        return
    if event.model not in servings:
        return
    view = servings[event.model]
    if not event.nodes:
        del servings[event.model]
        return
    view.nodes -= set(event.nodes)
    view.excluded |= set(event.nodes)
    if not view.live:
        del servings[event.model]


def matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Does a node with `labels` carry every one of `wanted`?"""
    return all(labels.get(key) == value for key, value in wanted.items())


def serving_nodes(view: ServingView, online: Iterable[NodeInfo]) -> list[str]:
    """The nodes serving `view` now: its named nodes and, when it has labels, every online node
    carrying them, minus the nodes stopped explicitly; sorted."""
    nodes = set(view.nodes)
    if view.labels:
        nodes |= {info.node for info in online if matches(info.labels, view.labels)}
    return sorted(nodes - view.excluded)


def server_actor_id(model: str, version: str, node: str) -> str:
    """`serve-{model}-v{version}-{node}` (`latest` when no version): a new version is a new actor."""
    return f"serve-{model}-v{version or 'latest'}-{node}"
