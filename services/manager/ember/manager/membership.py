"""What the manager makes of the node table (`ember.nodes`): membership facts and `nodes.list`.

A node joined once it is online with its info (NodeJoined, `{node}:joined:{info.started}`); a
joined node was lost once its latest status is offline (NodeLost, `{node}:lost:{status.since}`).
"""

from __future__ import annotations

from typing import Any

from ember.events import NodeJoined, NodeLost, fact_id
from ember.nodes import OFFLINE, ONLINE, NodeTable
from ember.projection import Projection


def membership_event(table: NodeTable, node: str, projection: Projection) -> tuple[str, NodeJoined | NodeLost] | None:
    """NodeJoined once a node is online with its info; NodeLost when a joined node goes offline."""
    row = table.row(node)
    if row.online and row.info is not None:
        info = row.info.model_dump(mode="json")
        return fact_id(node, "joined", row.info.started.isoformat()), NodeJoined(node=node, info=info)
    if row.offline and row.status is not None:
        known = projection.nodes.get(node)
        if known is not None and known.online:
            return fact_id(node, "lost", row.status.since.isoformat()), NodeLost(node=node, reason="offline")
    return None


def listing(table: NodeTable, projection: Projection) -> list[dict[str, Any]]:
    """`{node, status, since, info, actors}` per node; actors of live jobs placed there."""
    actors: dict[str, list[dict[str, Any]]] = {}
    for job in projection.jobs.values():
        if job.state.terminal:
            continue
        for actor in job.current_actors():
            actors.setdefault(actor.node, []).append(
                {"actor": actor.actor, "job": job.id, "role": actor.role.value, "state": actor.state.value}
            )
    out = []
    for name in sorted(set(table.rows) | set(projection.nodes)):
        row = table.row(name)
        known = projection.nodes.get(name)
        since: str | None
        if row.status is not None:
            status, since = row.status.status, row.status.since.isoformat()
        elif known is not None:
            status, since = (ONLINE if known.online else OFFLINE), known.since.isoformat()
        else:
            status, since = "unknown", None
        info = row.info.model_dump(mode="json") if row.info else (dict(known.info) if known else {})
        out.append({"node": name, "status": status, "since": since, "info": info, "actors": actors.get(name, [])})
    return out
