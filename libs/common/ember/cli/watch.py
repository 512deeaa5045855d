"""Follow a job until it ends: a live rich view on a terminal, one line per transition otherwise.

Woken by the job's events (`events/job/#`; without a terminal, every type but `RoundCompleted`,
as the plain output shows transitions only) and its actors' states; the manager's `jobs.get` is
the truth that is rendered. Wake-ups are coalesced: at most one `jobs.get` per `min_interval` (a job
whose rounds take milliseconds would otherwise have every round answered with the whole summary,
all rounds included, which costs the manager more than the training), and the live view asks
for the latest `LIVE_ROUNDS` rounds only; the summary returned at the end holds them all. A
manager that stops answering for a while (restart) is waited for. Image pulls (bytes done/total)
come straight from the actors' state reports (`ember.cli.pulls`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from ember import topics
from ember.bus import Bus, Message
from ember.cli.common import call, clock, elapsed, styled
from ember.cli.pulls import Pulls
from ember.cli.render import detail
from ember.errors import RequestTimeout, Unavailable
from ember.events import RoundCompleted, event_streams

TERMINAL = ("succeeded", "failed", "cancelled")
LIVE_ROUNDS = 10
"""Rounds the live view shows (and asks the manager for); the bar counts every round."""


async def follow_job(
    bus: Bus,
    job: str,
    console: Console,
    *,
    timeout: float | None = None,
    refresh: float = 1.0,
    settle: float = 3.0,
    min_interval: float = 0.2,
) -> dict[str, Any]:
    """Render `job` as it changes until it is terminal (or `timeout` s pass); return its summary."""
    wake = asyncio.Event()
    pulls = Pulls(job)

    async def on_message(message: Message) -> None:
        env = message.envelope
        if env is not None and (env.subject == job or env.data.get("job") == job):
            if env.type == "ActorReport":
                pulls.update(env.data)
            wake.set()

    live = Live(console=console, refresh_per_second=8, transient=False) if console.is_terminal else None
    if live is not None:
        bus.subscribe(topics.EVENT, on_message, aggregate="job")
    else:  # plain output prints transitions only: rounds need not wake it (a fast job has dozens a second)
        for aggregate, event_type in event_streams(aggregate="job", without=(RoundCompleted.__name__,)):
            bus.subscribe(topics.EVENT, on_message, aggregate=aggregate, type=event_type)
    bus.subscribe(topics.ACTOR_STATE, on_message)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    printed = 0
    summary: dict[str, Any] | None = None
    waiting_note = False
    ended_at: float | None = None
    with live if live is not None else contextlib.nullcontext():
        while True:
            wake.clear()
            asked = loop.time()
            try:
                summary = await call(bus, "jobs.get", {"job": job, "rounds": LIVE_ROUNDS}, timeout=3.0)
                waiting_note = False
            except (RequestTimeout, Unavailable):
                if summary is None and not waiting_note:
                    console.print("[yellow]waiting for the manager…[/]")
                waiting_note = True
            if summary is not None:
                if live is not None:
                    status = Text.from_markup("[yellow]manager not answering, retrying…[/]") if waiting_note else Text("")
                    bars = pulls.renderable()
                    live.update(Group(detail(summary), bars if bars is not None else Text(""), status))
                else:
                    printed = _print_new(console, summary, printed)
                    for line in pulls.lines():
                        console.print(escape(line))
                if summary["state"] in TERMINAL:
                    # the job ends with its aggregator; give the learners' last reports a moment
                    ended_at = ended_at if ended_at is not None else loop.time()
                    if _actors_settled(summary) or loop.time() - ended_at >= settle:
                        return await _whole(bus, job, summary)
            if deadline is not None and loop.time() >= deadline:
                if summary is None:
                    raise RequestTimeout(f"no manager answered about job {job}")
                return await _whole(bus, job, summary)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), refresh)
            await asyncio.sleep(max(0.0, asked + min_interval - loop.time()))  # coalesce bursts of events


async def _whole(bus: Bus, job: str, latest: dict[str, Any]) -> dict[str, Any]:
    """The job's summary with every round (the live one holds the latest few); `latest` if the
    manager does not answer."""
    if latest.get("rounds_completed", 0) <= len(latest.get("rounds", [])):
        return latest
    try:
        return await call(bus, "jobs.get", {"job": job}, timeout=3.0)
    except (RequestTimeout, Unavailable):
        return latest


def _actors_settled(summary: dict[str, Any]) -> bool:
    """Every actor of the latest generation has stopped (or there are none)."""
    actors = summary.get("actors", [])
    generation = max((a.get("generation", 0) for a in actors), default=0)
    return all(a["state"] in ("exited", "failed", "lost") for a in actors if a.get("generation", 0) == generation)


def _print_new(console: Console, summary: dict[str, Any], printed: int) -> int:
    """Plain output: one line per transition not printed yet."""
    transitions = summary.get("transitions", [])
    for tr in transitions[printed:]:
        console.print(
            f"{clock(tr['time'])} {elapsed(summary.get('submitted'), tr['time']):>10}  "
            f"{summary['job']}  {styled(tr['state'])}{' ' * max(1, 11 - len(tr['state']))}{escape(tr.get('reason', ''))}"
        )
    return len(transitions)
