"""The manager's node table, fed by the retained `nodes/{node}/info` and `.../status` topics.

It answers `nodes.list` and decides when a node joined or was lost, so the manager can append
NodeJoined (`{node}:joined:{info.started}`) and NodeLost (`{node}:lost:{status.since}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember.envelope import Envelope
from ember.events import NodeInfo, NodeJoined, NodeLost, NodeStatus, fact_id
from ember.projection import Projection

ONLINE, OFFLINE = "online", "offline"


@dataclass
class NodeRow:
    node: str
    status: NodeStatus | None = None
    info: NodeInfo | None = None


def parse_info(envelope: Envelope, params: dict[str, str]) -> NodeInfo:
    info = NodeInfo.model_validate(envelope.data)
    if info.node != params.get("node"):
        raise ValueError(f"info of node {info.node!r} published on the topic of {params.get('node')!r}")
    return info


def parse_status(envelope: Envelope, params: dict[str, str]) -> NodeStatus:
    status = NodeStatus.model_validate(envelope.data)
    if status.node != params.get("node"):
        raise ValueError(f"status of node {status.node!r} published on the topic of {params.get('node')!r}")
    if status.status not in (ONLINE, OFFLINE):
        raise ValueError(f"node status must be {ONLINE!r} or {OFFLINE!r}, got {status.status!r}")
    return status


class NodeTable:
    """Latest info and status per node, as the flamelets last published them."""

    def __init__(self) -> None:
        self.rows: dict[str, NodeRow] = {}

    def _row(self, node: str) -> NodeRow:
        return self.rows.setdefault(node, NodeRow(node))

    def update_info(self, info: NodeInfo) -> None:
        self._row(info.node).info = info

    def update_status(self, status: NodeStatus) -> None:
        row = self._row(status.node)
        if row.status is None or status.since >= row.status.since:
            row.status = status

    def membership_event(self, node: str, projection: Projection) -> tuple[str, NodeJoined | NodeLost] | None:
        """NodeJoined once a node is online with its info; NodeLost when a joined node goes offline."""
        row = self.rows.get(node)
        if row is None or row.status is None:
            return None
        if row.status.status == ONLINE and row.info is not None:
            info = row.info.model_dump(mode="json")
            return fact_id(node, "joined", row.info.started.isoformat()), NodeJoined(node=node, info=info)
        if row.status.status == OFFLINE:
            known = projection.nodes.get(node)
            if known is not None and known.online:
                return fact_id(node, "lost", row.status.since.isoformat()), NodeLost(node=node, reason="offline")
        return None

    def listing(self, projection: Projection) -> list[dict[str, Any]]:
        """`{node, status, since, info, actors}` per node; actors of live jobs placed there."""
        actors: dict[str, list[dict[str, Any]]] = {}
        for job in projection.jobs.values():
            if job.state.terminal:
                continue
            for actor in job.current_actors():
                actors.setdefault(actor.node, []).append(
                    {"actor": actor.actor, "job": job.id, "role": actor.role.value, "state": actor.state.value}
                )
        names = sorted(set(self.rows) | set(projection.nodes))
        out = []
        for name in names:
            row = self.rows.get(name, NodeRow(name))
            known = projection.nodes.get(name)
            if row.status is not None:
                status, since = row.status.status, row.status.since.isoformat()
            elif known is not None:
                status, since = (ONLINE if known.online else OFFLINE), known.since.isoformat()
            else:
                status, since = "unknown", None
            info = row.info.model_dump(mode="json") if row.info else (dict(known.info) if known else {})
            out.append({"node": name, "status": status, "since": since, "info": info, "actors": actors.get(name, [])})
        return out
