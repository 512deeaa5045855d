"""The node model: what flamelets announce on `nodes/{node}/info` and `nodes/{node}/status`
(both retained), and the table of it that the manager and the notifier keep.

A node is *online* once its latest status says `online` and its info has arrived; only then can it
take actors. It is *offline* once its latest status says `offline`; a node heard of through its
info alone is neither.

Which status is the latest (the one ordering rule): a status replaces the one held for its node
unless its `since` is older; of two with the same `since`, the later message wins. `since` is
made to be compared (see `ember.flamelet.app`):

- a connection's `online` status carries the `since` of that connection's Last Will (`offline`),
  so when the connection dies the will, equal and later, takes the node offline;
- the will and the `online` of every later connection, of the same run or of a restarted
  flamelet, are composed later and carry a later `since`; a will of an earlier connection that
  arrives after them (a broker noticing a dead connection late) is older and cannot take a node
  that came back offline again;
- a clean shutdown publishes `offline` with the time of the shutdown, newer than the `online`
  it ends.

All `since` values of one node come from that node's clock, so they compare even when the hosts'
clocks disagree. Infos have a single publisher and the broker keeps the order of the messages on
one topic, so the last info wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.envelope import Envelope
from ember.events import NodeInfo, NodeStatus

ONLINE = "online"
OFFLINE = "offline"
STATUSES = (ONLINE, OFFLINE)


def parse_info(envelope: Envelope, params: dict[str, str]) -> NodeInfo:
    """The NodeInfo in `envelope`, checked against its topic's `{node}`; ValueError otherwise."""
    info = NodeInfo.model_validate(envelope.data)
    if info.node != params.get("node"):
        raise ValueError(f"info of node {info.node!r} published on the topic of {params.get('node')!r}")
    return info


def parse_status(envelope: Envelope, params: dict[str, str]) -> NodeStatus:
    """The NodeStatus in `envelope`, checked against its topic and `STATUSES`; ValueError otherwise."""
    status = NodeStatus.model_validate(envelope.data)
    if status.node != params.get("node"):
        raise ValueError(f"status of node {status.node!r} published on the topic of {params.get('node')!r}")
    if status.status not in STATUSES:
        raise ValueError(f"node status must be {ONLINE!r} or {OFFLINE!r}, got {status.status!r}")
    return status


def supersedes(new: NodeStatus, held: NodeStatus | None) -> bool:
    """The ordering rule: `new` replaces `held` unless its `since` is older."""
    return held is None or new.since >= held.since


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
    """Latest info and status per node; the `update_*` methods say whether the node changed."""

    def __init__(self) -> None:
        self.rows: dict[str, NodeRow] = {}

    def row(self, node: str) -> NodeRow:
        """The node's row; an empty one (not stored) for a node not heard of."""
        return self.rows.get(node) or NodeRow(node)

    def update_info(self, info: NodeInfo) -> bool:
        """Hold `info` (the last one wins); True if it differs from the one held."""
        row = self.rows.setdefault(info.node, NodeRow(info.node))
        changed = row.info != info
        row.info = info
        return changed

    def update_status(self, status: NodeStatus) -> bool:
        """Hold `status` if it `supersedes` the one held; True if the node went online or offline."""
        row = self.rows.setdefault(status.node, NodeRow(status.node))
        if not supersedes(status, row.status):
            return False
        changed = row.status is None or row.status.status != status.status
        row.status = status
        return changed

    def online(self) -> list[NodeInfo]:
        """The info of every node that can take actors, by node name."""
        return [row.info for _, row in sorted(self.rows.items()) if row.online and row.info is not None]

    def offline(self) -> set[str]:
        """Nodes whose latest status is `offline`."""
        return {row.node for row in self.rows.values() if row.offline}
