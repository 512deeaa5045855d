"""An actor's view of its own job's placement: the retained `jobs/{job}/placement` (`JobPlacement`).

The notifier publishes each job's current placement (retained, the newest) from the event log: the
actors of the job's current generation and their nodes, none once the job ended. An actor follows
the placement of its own job (the only one its credentials let it read):

- while it is listed, the placement's learners are the job's current learners: the aggregator
  follows them, so a learner re-placed after a node loss joins the running job and a fenced one is
  dropped;
- once a placement of its generation or a later one no longer lists it (its node was declared lost
  and it was re-placed elsewhere, or the job ended), its generation is over: it is *fenced* and stops
  itself, whether or not its flamelet is still there to stop it (a flamelet killed with SIGKILL
  stops nothing). A placement older than the actor's own generation is stale and changes nothing.

No retained placement (an actor run by hand or by a test, without a notifier) fences nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ember import topics
from ember.bus import Bus, Message
from ember.envelope import inbound
from ember.events import JobPlacement, Role
from ember.log import get_logger


@dataclass(frozen=True)
class Roster:
    """The job's current placement as far as the aggregator needs it."""

    generation: int
    learners: tuple[str, ...]


OnRoster = Callable[[Roster], None]
OnFenced = Callable[[str], None]


class PlacementWatch:
    """Follows `jobs/{job}/placement` for one actor; register on its bus before the bus starts.
    The callbacks run on the bus's event loop."""

    def __init__(self, bus: Bus, *, job: str, actor: str, generation: int, on_fenced: OnFenced, on_roster: OnRoster | None = None) -> None:
        self.job, self.actor, self.generation = job, actor, generation
        self.fenced: str | None = None
        self.roster: Roster | None = None
        self._on_fenced, self._on_roster = on_fenced, on_roster
        self.log = get_logger("ember.fl.fence", job=job, actor=actor)
        if job:
            bus.subscribe(topics.JOB_PLACEMENT, self._on_placement, job=job)

    async def _on_placement(self, message: Message) -> None:
        with inbound():
            placement = JobPlacement.model_validate(message.body.data)
        if self.fenced is not None or placement.job != self.job or placement.generation < self.generation:
            return
        if not any(p.actor == self.actor for p in placement.actors):
            why = "the job ended" if placement.ended else f"re-placed in generation {placement.generation}"
            self.fenced = f"fenced: no longer placed ({why})"
            self.log.warning("actor.fenced", reason=self.fenced, generation=self.generation)
            self._on_fenced(self.fenced)
            return
        learners = tuple(p.actor for p in sorted(placement.actors, key=lambda p: (p.index, p.actor)) if p.role == Role.LEARNER)
        roster = Roster(placement.generation, learners)
        if roster != self.roster:
            self.roster = roster
            if self._on_roster is not None:
                self._on_roster(roster)
