"""What the manager makes of model serving: the events of `models.serve` / `models.stop`, the
`models.serving` listing and the serving actors it adds to `nodes.list`."""

from __future__ import annotations

from typing import Any

from ember.actions import ServeModel, StopServing
from ember.errors import InvalidRequest, NotFound
from ember.events import ActorReport, ActorState, ModelServeRequested, ModelServeStopped, fact_id
from ember.nodes import NodeTable
from ember.projection import Projection
from ember.serving import ServingView, server_actor_id, serving_nodes


def requested(request: ServeModel, request_id: str) -> tuple[str, ModelServeRequested]:
    """The event of a serve request (`{model}:serve:{request}`: a retried request appends it once)."""
    if not request.nodes and not request.labels:
        raise InvalidRequest("name the nodes to serve on (--node) or labels they must carry (--label)")
    event = ModelServeRequested(model=request.model, version=request.version, nodes=sorted(set(request.nodes)),
                                labels=request.labels, tag=request.tag)
    return fact_id(request.model, "serve", request_id), event


def stopped(request: StopServing, request_id: str, projection: Projection) -> tuple[str, ModelServeStopped]:
    if request.model not in projection.servings:
        raise NotFound(f"model {request.model} is not served")
    return fact_id(request.model, "stop", request_id), ModelServeStopped(model=request.model, nodes=sorted(set(request.nodes)))


def summary(view: ServingView | None, model: str, table: NodeTable) -> dict[str, Any]:
    if view is None:
        return {"model": model, "nodes": []}
    return {"model": model, "version": view.version, "tag": view.tag, "labels": dict(view.labels),
            "nodes": serving_nodes(view, table.online())}


def listing(projection: Projection, table: NodeTable) -> list[dict[str, Any]]:
    return [summary(view, model, table) for model, view in sorted(projection.servings.items())]


def node_actors(projection: Projection, table: NodeTable, reports: dict[str, ActorReport],
                urls: dict[tuple[str, str], str]) -> dict[str, list[dict[str, Any]]]:
    """node -> its serving actors as `nodes.list` shows them, with their latest state and URL."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model, view in sorted(projection.servings.items()):
        for node in serving_nodes(view, table.online()):
            actor = server_actor_id(model, view.version, node)
            report = reports.get(actor)
            state = report.state if report is not None else ActorState.PENDING
            row = {"actor": actor, "job": f"serve-{model}", "role": "server", "state": state.value}
            if urls.get((node, model)):
                row["url"] = urls[(node, model)]
            out.setdefault(node, []).append(row)
    return out
