"""The node model (`ember.nodes`): parsing, the table, and the ordering rule for statuses.

The statuses here carry `since` values made the way a flamelet makes them (`ember.flamelet.app`):
a connection's `online` and its Last Will share the `since` composed before the connection; every
later connection, of the same run or after a restart, composes a later one; a clean shutdown
publishes `offline` with the time of the shutdown. tests/test_flamelet.py feeds the same table
with what a real flamelet publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.envelope import Envelope
from ember.events import NodeInfo, NodeStatus
from ember.nodes import OFFLINE, ONLINE, NodeTable, parse_info, parse_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def status(value: str, seconds: float, node: str = "n1") -> NodeStatus:
    return NodeStatus(node=node, status=value, since=T0 + timedelta(seconds=seconds))


def table_with(*statuses: NodeStatus, info: bool = True) -> NodeTable:
    table = NodeTable()
    if info:
        table.update_info(NodeInfo(node="n1", cpus=2, memory_mb=1024))
    for s in statuses:
        table.update_status(s)
    return table


def test_the_will_of_a_connection_takes_its_node_offline():
    table = table_with(status(ONLINE, 1), status(OFFLINE, 1))  # same `since`: the later message wins
    assert table.row("n1").offline and table.offline() == {"n1"} and table.online() == []


def test_a_late_will_of_an_earlier_run_cannot_take_a_restarted_node_offline():
    table = table_with(status(ONLINE, 1), status(ONLINE, 5), status(OFFLINE, 1))
    assert table.row("n1").online and table.row("n1").status == status(ONLINE, 5)


def test_a_clean_shutdown_is_newer_than_the_online_it_ends_and_a_restart_newer_still():
    table = table_with(status(ONLINE, 1), status(OFFLINE, 7))
    assert table.row("n1").offline
    assert table.update_status(status(ONLINE, 8)) and table.row("n1").online


def test_update_status_says_whether_the_node_went_online_or_offline():
    table = NodeTable()
    assert table.update_status(status(ONLINE, 1))
    assert not table.update_status(status(ONLINE, 2)), "still online"
    assert not table.update_status(status(OFFLINE, 0)), "older: ignored"
    assert table.update_status(status(OFFLINE, 2))


def test_a_node_is_online_only_with_its_info_and_unknown_nodes_are_neither():
    table = table_with(status(ONLINE, 1), info=False)
    assert not table.row("n1").online and table.online() == []
    assert table.update_info(NodeInfo(node="n1", cpus=2, memory_mb=1024))
    assert not table.update_info(NodeInfo(node="n1", cpus=2, memory_mb=1024, started=table.rows["n1"].info.started))
    assert [info.node for info in table.online()] == ["n1"]
    assert not table.row("n9").online and not table.row("n9").offline and "n9" not in table.rows


def test_parsing_checks_the_topic_and_the_status_value():
    def envelope(type_: str, data: dict) -> Envelope:
        return Envelope(type=type_, source="test", data=data)

    info = NodeInfo(node="n1", cpus=1, memory_mb=64).model_dump(mode="json")
    assert parse_info(envelope("NodeInfo", info), {"node": "n1"}).node == "n1"
    with pytest.raises(ValueError, match="info of node 'n1' published on the topic of 'n2'"):
        parse_info(envelope("NodeInfo", info), {"node": "n2"})
    assert parse_status(envelope("NodeStatus", {"node": "n1", "status": "online"}), {"node": "n1"}).status == ONLINE
    with pytest.raises(ValueError, match="status of node 'n1' published on the topic of 'n2'"):
        parse_status(envelope("NodeStatus", {"node": "n1", "status": "online"}), {"node": "n2"})
    with pytest.raises(ValueError, match="node status must be 'online' or 'offline', got 'sleeping'"):
        parse_status(envelope("NodeStatus", {"node": "n1", "status": "sleeping"}), {"node": "n1"})


@dataclass(frozen=True)
class Connection:
    ends: str
    """How it ends: "alive" (the last one only), "dies" (the broker sends its will) or "stops" (clean shutdown)."""
    will_late: bool
    """Its will reaches the reader only after every later message."""


@settings(deadline=None, database=None)
@given(st.lists(st.builds(Connection, st.sampled_from(["dies", "stops"]), st.booleans()), max_size=6),
       st.sampled_from(["alive", "dies", "stops"]))
def test_the_table_ends_with_the_node_as_it_is_whatever_order_old_wills_arrive_in(history, last):
    """Connections one after the other (reconnects or restarts), each with an `online` and an end;
    wills of dead connections may arrive late. The table ends online exactly when the last
    connection is alive."""
    connections = [*history, Connection(last, False)]
    messages: list[NodeStatus] = []
    late: list[NodeStatus] = []
    clock = 0.0
    for connection in connections:
        clock += 1
        will_since = clock  # composed before the connection; its `online` carries the same `since`
        clock += 1
        messages.append(status(ONLINE, will_since))
        if connection.ends == "dies":
            (late if connection.will_late else messages).append(status(OFFLINE, will_since))
        elif connection.ends == "stops":
            clock += 1
            messages.append(status(OFFLINE, clock))
    table = table_with(*messages, *late)
    assert table.row("n1").online == (last == "alive")
    assert table.row("n1").offline == (last != "alive")
