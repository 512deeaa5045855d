"""The notifier's live node table, fed by the retained `nodes/{node}/info` and `.../status`."""

from __future__ import annotations

from dataclasses import dataclass

from ember.envelope import Envelope
from ember.events import NodeInfo, NodeStatus

ONLINE, OFFLINE = "online", "offline"


def parse_info(envelope: Envelope, params: dict[str, str]) -> NodeInfo:
    """The NodeInfo in `envelope`, checked against its topic; ValueError otherwise."""
    info = NodeInfo.model_validate(envelope.data)
    if info.node != params.get("node"):
        raise ValueError(f"info of node {info.node!r} on the topic of {params.get('node')!r}")
    return info


def parse_status(envelope: Envelope, params: dict[str, str]) -> NodeStatus:
    status = NodeStatus.model_validate(envelope.data)
    if status.node != params.get("node"):
        raise ValueError(f"status of node {status.node!r} on the topic of {params.get('node')!r}")
    if status.status not in (ONLINE, OFFLINE):
        raise ValueError(f"node status must be {ONLINE!r} or {OFFLINE!r}, got {status.status!r}")
    return status


@dataclass
class NodeRow:
    node: str
    info: NodeInfo | None = None
    status: NodeStatus | None = None

    @property
    def online(self) -> bool:
        """Online and announced: the node can take actors."""
        return self.info is not None and self.status is not None and self.status.status == ONLINE

    @property
    def offline(self) -> bool:
        """Known to be offline (a node not heard of yet is neither online nor offline)."""
        return self.status is not None and self.status.status == OFFLINE


class NodeTable:
    """Latest info and status per node; the `update_*` methods say whether anything changed."""

    def __init__(self) -> None:
        self.rows: dict[str, NodeRow] = {}

    def row(self, node: str) -> NodeRow:
        return self.rows.get(node) or NodeRow(node)

    def update_info(self, info: NodeInfo) -> bool:
        row = self.rows.setdefault(info.node, NodeRow(info.node))
        changed = row.info != info
        row.info = info
        return changed

    def update_status(self, status: NodeStatus) -> bool:
        # The broker orders messages on one topic; the last one wins. (`since` cannot be compared:
        # a Last Will is composed before the online status of the same connection.)
        row = self.rows.setdefault(status.node, NodeRow(status.node))
        changed = row.status is None or row.status.status != status.status
        row.status = status
        return changed

    def online(self) -> list[NodeRow]:
        return sorted((row for row in self.rows.values() if row.online), key=lambda row: row.node)
