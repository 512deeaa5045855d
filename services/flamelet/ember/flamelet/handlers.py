"""Flamelet topic handlers: decode, check, hand over to the supervisor (thin)."""

from __future__ import annotations

from ember.bus import Message
from ember.envelope import inbound
from ember.events import DesiredState
from ember.flamelet.supervisor import Supervisor
from ember.log import get_logger

log = get_logger("ember.flamelet.handlers")


def parse_desired(message: Message, node: str) -> DesiredState:
    """The desired state in `message`; ValueError otherwise."""
    desired = DesiredState.model_validate(message.body.data)
    if desired.node != node or message.params.get("node") != node:
        raise ValueError(f"desired state for node {desired.node!r} on the topic of {message.params.get('node')!r}")
    for spec in desired.actors:
        if "/" in spec.actor or spec.actor.startswith("."):
            raise ValueError(f"invalid actor id {spec.actor!r}")
    return desired


def desired_handler(supervisor: Supervisor):
    """Handler for `nodes/{node}/desired`."""

    async def on_desired(message: Message) -> None:
        with inbound():
            desired = parse_desired(message, supervisor.node)
        applied = await supervisor.apply(desired)
        if applied:
            log.info("flamelet.desired_applied", node=supervisor.node, revision=desired.revision, actors=len(desired.actors))
        else:
            log.info("flamelet.desired_stale", node=supervisor.node, revision=desired.revision, applied=supervisor.revision)

    return on_desired
