"""An actor's view of its own placement: the retained desired state of its node.

The notifier publishes each node's desired state (retained, always the newest) from the event log:
every actor of the current placement generation of every live job, each with its environment
(`EMBER_LEARNERS`, `EMBER_GENERATION`). An actor watches the desired state of its own node:

- while it is listed, its spec gives the job's current learners: the aggregator follows them, so a
  learner re-placed after a node loss joins the running job and a fenced one is dropped;
- once it is no longer listed (its node was declared lost and it was re-placed elsewhere, or the
  job ended) its generation is over: it is *fenced* and stops itself. That holds whether or not its
  flamelet is still there to stop it (a flamelet killed with SIGKILL stops nothing).

No retained desired state (an actor run by hand or by a test, without a notifier) fences nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ember import topics
from ember.bus import Bus, Message
from ember.events import DesiredState
from ember.log import get_logger


@dataclass(frozen=True)
class Roster:
    """The job's current placement as the actor's own spec tells it."""

    generation: int
    learners: tuple[str, ...]


OnRoster = Callable[[Roster], None]
OnFenced = Callable[[str], None]


class PlacementWatch:
    """Follows `nodes/{node}/desired` for one actor; register on its bus before the bus starts.
    The callbacks run on the bus's event loop."""

    def __init__(self, bus: Bus, *, node: str, actor: str, on_fenced: OnFenced, on_roster: OnRoster | None = None) -> None:
        self.node, self.actor = node, actor
        self.fenced: str | None = None
        self.roster: Roster | None = None
        self._on_fenced, self._on_roster = on_fenced, on_roster
        self.log = get_logger("ember.fl.fence", node=node, actor=actor)
        if node:
            bus.subscribe(topics.NODE_DESIRED, self._on_desired, node=node)

    async def _on_desired(self, message: Message) -> None:
        assert message.envelope is not None
        desired = DesiredState.model_validate(message.envelope.data)  # invalid: the bus drops it
        if self.fenced is not None or desired.node != self.node:
            return
        spec = next((s for s in desired.actors if s.actor == self.actor), None)
        if spec is None:
            self.fenced = f"fenced: no longer desired on {self.node} (desired state revision {desired.revision})"
            self.log.warning("actor.fenced", reason=self.fenced)
            self._on_fenced(self.fenced)
            return
        learners = tuple(item.strip() for item in spec.env.get("EMBER_LEARNERS", "").split(",") if item.strip())
        roster = Roster(int(spec.env.get("EMBER_GENERATION", "0") or 0), learners)
        if roster != self.roster:
            self.roster = roster
            if self._on_roster is not None:
                self._on_roster(roster)
