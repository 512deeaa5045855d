"""The dashboard's view of the federation: one `Feed` per view that pages watch, refetched from
the manager when the bus says it changed.

Memory stays flat however long a page stays open: a feed holds its latest value only, a client
holds the version it last sent (a queue of at most one: a slow client skips to the latest value,
it never accumulates), feeds nobody watches are dropped, and the live log lines kept per actor are
a bounded deque for the jobs an open page shows. Refetches are coalesced: at most one per
`min_interval` per feed, whatever the number of clients or the rate of events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ember import topics
from ember.bus import Bus, Message
from ember.errors import EmberError, RequestTimeout, Unavailable

LOG_LINES = 200
"""Live log lines kept per actor of a watched job."""
RETRY = 2.0
"""Seconds before asking again a manager that did not answer."""

Fetch = Callable[[], Awaitable[Any]]


class Feed:
    """The latest value of one view; `version` grows each time it is refetched."""

    def __init__(self, key: str, fetch: Fetch, min_interval: float) -> None:
        self.key = key
        self.fetch = fetch
        self.min_interval = min_interval
        self.value: Any = None
        self.version = 0
        self.clients = 0
        self.task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._dirty.set()
        self._changed = asyncio.Event()

    def touch(self) -> None:
        """Something this view shows changed: refetch it (coalesced)."""
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            retry = False
            try:
                self.value = await self.fetch()
            except (RequestTimeout, Unavailable) as exc:  # the manager away or restarting: say so, ask again
                self.value, retry = {"error": exc.message}, True
            except EmberError as exc:  # e.g. no such job (yet): the next event about it refetches
                self.value = {"error": exc.message}
            self.version += 1
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
            await asyncio.sleep(RETRY if retry else self.min_interval)
            if retry:
                self._dirty.set()

    async def wait_newer(self, seen: int, timeout: float) -> bool:  # noqa: ASYNC109 - heartbeat period
        """Until a value newer than `seen` is there (True) or `timeout` passes (False)."""
        if self.version > seen:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version > seen


class Hub:
    """Routes bus messages to the feeds of the views they change."""

    def __init__(self, bus: Bus, *, min_interval: float = 0.2, request_timeout: float = 5.0) -> None:
        self.bus = bus
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self.feeds: dict[str, Feed] = {}
        self.logs: dict[str, dict[str, deque[str]]] = {}
        """job -> actor -> live log lines, for watched jobs only."""
        bus.subscribe(topics.EVENT, self._on_event)
        bus.subscribe(topics.ACTOR_STATE, self._on_actor)
        bus.subscribe(topics.ACTOR_LOG, self._on_log)
        bus.subscribe(topics.NODE_INFO, self._on_node)

    async def request(self, action: str, data: dict[str, Any] | None = None) -> Any:
        return await self.bus.request(action, data or {}, timeout=self.request_timeout)

    @contextlib.asynccontextmanager
    async def watch(self, key: str, fetch: Fetch) -> AsyncIterator[Feed]:
        """The feed of view `key` for the duration of one client (created on first use, dropped
        when its last client leaves)."""
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = Feed(key, fetch, self.min_interval)
            feed.task = asyncio.get_running_loop().create_task(feed.run(), name=f"ui-feed:{key}")
            if key.startswith("job:"):
                self.logs.setdefault(key[4:], {})
        feed.clients += 1
        try:
            yield feed
        finally:
            feed.clients -= 1
            if feed.clients == 0 and self.feeds.get(key) is feed:
                del self.feeds[key]
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed.task
                if key.startswith("job:"):
                    self.logs.pop(key[4:], None)

    def job_logs(self, job: str, actors: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Each actor's lines: the tail it last reported, then the lines streamed since."""
        live = self.logs.get(job, {})
        out: dict[str, list[str]] = {}
        for actor in actors:
            lines = live.get(actor["actor"])
            if lines is None:
                lines = deque((actor.get("log_tail") or "").splitlines(), maxlen=LOG_LINES)
                if job in self.logs:
                    live[actor["actor"]] = lines
            out[actor["actor"]] = list(lines)
        return out

    def _touch(self, *keys: str) -> None:
        for key in keys:
            feed = self.feeds.get(key)
            if feed is not None:
                feed.touch()

    async def _on_event(self, message: Message) -> None:
        aggregate = message.params.get("aggregate")
        if aggregate == "job":
            self._touch("jobs", f"job:{message.body.subject}")
        self._touch("nodes")

    async def _on_actor(self, message: Message) -> None:
        job = message.body.data.get("job")
        self._touch("nodes", *((f"job:{job}",) if isinstance(job, str) else ()))

    async def _on_node(self, message: Message) -> None:
        self._touch("nodes")

    async def _on_log(self, message: Message) -> None:
        data = message.body.data
        job, actor, lines = data.get("job"), data.get("actor"), data.get("lines")
        watched = self.logs.get(job) if isinstance(job, str) else None
        if watched is None or not isinstance(actor, str) or not isinstance(lines, list):
            return
        kept = watched.setdefault(actor, deque(maxlen=LOG_LINES))
        kept.extend(str(line) for line in lines)
        self._touch(f"job:{job}")
