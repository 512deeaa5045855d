"""Notifier topic handlers: decode, update the node table, wake the reconcile loop (thin)."""

from __future__ import annotations

from collections.abc import Callable

from ember.bus import Message
from ember.envelope import inbound
from ember.log import get_logger
from ember.nodes import NodeTable, parse_info, parse_status

log = get_logger("ember.notifier.handlers")


def node_handlers(table: NodeTable, wake: Callable[[], None]):
    """Handlers for `nodes/{node}/info` and `nodes/{node}/status` (retained)."""

    async def on_info(message: Message) -> None:
        with inbound():
            info = parse_info(message.body, message.params)
        if table.update_info(info):
            log.info("notifier.node_info", node=info.node, capabilities=[r.value for r in info.capabilities], cpus=info.cpus,
                     data=sorted(info.data))
            wake()

    async def on_status(message: Message) -> None:
        with inbound():
            status = parse_status(message.body, message.params)
        if table.update_status(status):
            log.info("notifier.node_status", node=status.node, status=status.status)
            wake()

    return on_info, on_status
