"""One lifecycle for every long-running service (manager, builder, notifier, flamelet, mldata).

    class Manager(Service):
        name = "manager"
        async def open(self) -> None: ...      # resources and connections; raise to refuse to start
        def loops(self) -> dict[str, Coroutine]: return {"follower": self.follower.run()}
        async def drain(self) -> None: ...     # stop taking work, wait for the work in flight
        async def close(self) -> None: ...     # release what open() acquired (also a partial open)

    async with Manager(settings) as service:   # serving once entered
        await service.wait_stopped()           # until request_stop() (SIGTERM/SIGINT) or a loop dies

    def main(argv=None) -> int:                # `python -m ember.manager` and `ember manager run`
        return run_main("manager", lambda: parse_args(argv), Manager)

Start: `open()`, then the loops in one `asyncio.TaskGroup`, then `ready()`; a stop requested
meanwhile (a SIGTERM during start-up) ends the start early and cleanly. Shutdown runs once, in
order: stop requested -> `<name>.stopping` -> `drain()`, given `grace` seconds and then
cancelled (`abandon()` if it did not finish) -> the loops (and every task in their group)
cancelled -> `close()` -> `<name>.stopped`.
A loop runs until it is cancelled: one that raises, or returns while the service is not
stopping, is fatal. The group cancels the other loops, the service stops without draining (the
work in flight may depend on the dead loop), and the error is raised by `wait_stopped()`, or on
leaving the `async with` block if nothing raised it there.

`run_main` is the one exit-code policy of every service process:

- 0: a clean stop, on SIGTERM or SIGINT (Ctrl-C) included;
- an `EmberError`'s own `exit_code` (`ember.errors`): 2 invalid settings or flags, 6 the broker
  cannot be reached, ...;
- 1 (`EXIT_CRASHED`): anything else, logged as `<name>.crashed` with its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

from pydantic import ValidationError

from ember import log as ember_log
from ember.bus import Bus
from ember.errors import EmberError, InvalidSettings
from ember.metrics import Metric, MetricsServer, bus_metrics
from ember.settings import Settings

S = TypeVar("S", bound=Settings)

EXIT_OK = 0
EXIT_CRASHED = 1
"""A crash: anything but an `EmberError` escaped the service (same code as `EmberError`'s)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LoopEnded(RuntimeError):
    """A loop returned although the service was not stopping."""


class Service:
    """Base of a long-running service: an async context manager; `shutdown()` is idempotent.

    Subclasses set `name` and override the hooks they need (`open`, `loops`, `ready`, `drain`,
    `abandon`, `close`, `started_fields`, `stopped_fields`). `grace` bounds `drain()`; `None` leaves the
    bound to `drain()` itself (the flamelet's actors each get their own stop grace).
    """

    name: ClassVar[str] = "service"

    def __init__(self, *, grace: float | None) -> None:
        self.grace = grace
        self.fatal: BaseException | None = None
        """The first error of a loop (or of `drain()`); set once, never cleared."""
        self.log = ember_log.get_logger(f"ember.{self.name}")
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._fatal_raised = False
        self._metrics: MetricsServer | None = None

    # --- hooks -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Acquire resources and connect; raise to refuse to start (then `close()` runs)."""

    def loops(self) -> Mapping[str, Coroutine[Any, Any, None]]:
        """The loops to run until shutdown, by name; `self.group` is usable from here on."""
        return {}

    async def ready(self) -> None:
        """Return once the service serves (the loops are running); the default: at once."""

    async def drain(self) -> None:
        """On a clean stop: stop taking work and wait for the work in flight (within `grace`)."""

    def abandon(self) -> None:
        """When `drain()` did not run to its end (the grace period ended, a loop died, or the
        start never got that far): stop the work still in flight the hard way (e.g. kill a
        subprocess) before the loops are cancelled."""

    async def close(self) -> None:
        """After the loops are done: release what `open()` acquired, whatever part of it did."""

    def started_fields(self) -> dict[str, Any]:
        """Fields of the `<name>.started` log line."""
        return {}

    def stopped_fields(self) -> dict[str, Any]:
        """Fields of the `<name>.stopped` log line."""
        return {}

    def metrics(self) -> Iterable[Metric]:
        """Prometheus metrics read from the service's state at each scrape, besides the bus
        counters (`ember.metrics`); called on the event loop's thread."""
        return ()

    # --- metrics -------------------------------------------------------------------------------
    def _collect(self) -> list[Metric]:
        """Runs on the event loop's thread (the scrape's thread waits for it): the state it reads
        is only ever changed there."""
        bus = getattr(self, "bus", None)
        return [*(bus_metrics(bus.stats) if bus is not None else ()), *self.metrics()]

    def _collect_from_thread(self, loop: asyncio.AbstractEventLoop) -> list[Metric]:
        async def collect() -> list[Metric]:
            return self._collect()

        return asyncio.run_coroutine_threadsafe(collect(), loop).result(timeout=10)

    def _start_metrics(self) -> None:
        """Serve `/metrics` when the service's settings (`self.settings`) set `metrics_port`."""
        settings = getattr(self, "settings", None)
        port = getattr(settings, "metrics_port", 0)
        if port:
            loop = asyncio.get_running_loop()
            host = getattr(settings, "metrics_host", "127.0.0.1")
            self._metrics = MetricsServer(lambda: self._collect_from_thread(loop), host=host, port=port)
            try:
                self._metrics.start()
            except OSError as exc:
                self._metrics = None
                raise InvalidSettings(f"cannot serve metrics on {host}:{port}: {exc}") from None

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def group(self) -> asyncio.TaskGroup:
        """The loops' `TaskGroup`, for helpers that start tasks of their own (they are cancelled
        with the loops, and one that raises takes the service down like a loop)."""
        if self._group is None:
            raise RuntimeError(f"the {self.name}'s loops are not running")
        return self._group

    async def __aenter__(self) -> Self:
        try:
            await self._unless_stopped(self.open())
            if not self._stop.is_set():
                self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}:loops")
                self._runner.add_done_callback(self._runner_done)
                await self._unless_stopped(self.ready())
            if not self._stop.is_set():
                self._start_metrics()
            if self.fatal is not None:
                raise self.fatal
        except BaseException:
            await self.shutdown()
            raise
        if not self._stop.is_set():
            metrics = {"metrics": self._metrics.url} if self._metrics is not None else {}
            self.log.info(f"{self.name}.started", **self.started_fields(), **metrics)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.shutdown()
        if exc_type is None and self.fatal is not None and not self._fatal_raised:
            self._fatal_raised = True
            raise self.fatal

    def request_stop(self) -> None:
        """Ask for a clean shutdown; safe from a signal handler, idempotent."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Until a stop is requested or a loop dies; raises the loop's error in the second case."""
        await self._stop.wait()
        if self.fatal is not None:
            self._fatal_raised = True
            raise self.fatal

    async def shutdown(self) -> None:
        """Drain (within `grace`), cancel the loops, close. Idempotent: every caller waits for
        the same shutdown, which goes on even if a caller is cancelled."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._shut_down(), name=f"{self.name}:shutdown")
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        self._stop.set()
        self.log.info(f"{self.name}.stopping", **({"error": repr(self.fatal)} if self.fatal else {}))
        try:
            if not (self._runner is not None and self.fatal is None and await self._drain()):
                self.abandon()
            await self._cancel_loops()
            if self._metrics is not None:
                await asyncio.to_thread(self._metrics.stop)
            await self.close()
        finally:
            self.log.info(f"{self.name}.stopped", **self.stopped_fields())

    async def _drain(self) -> bool:
        """Run `drain()` for at most `grace` seconds; whether it finished."""
        drain = asyncio.ensure_future(self.drain())
        drain.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait({drain}, timeout=self.grace)
        finally:
            if not drain.done():
                drain.cancel()
        if not done:
            self.log.warning(f"{self.name}.grace_expired", grace=self.grace)
            return False
        if (exc := drain.exception()) is not None:
            self._fail("drain", exc)
            return False
        return True

    # --- loops ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            for name, coro in self.loops().items():
                self._loops.append(group.create_task(self._loop(name, coro), name=f"{self.name}:{name}"))
            await self._stop.wait()  # the loops go on while draining; `_cancel_loops` ends them

    async def _loop(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception as exc:
            self._fail(name, exc)
            raise
        if not self._stop.is_set():
            ended = LoopEnded(f"the {self.name}'s {name} loop ended")
            self._fail(name, ended)
            raise ended

    def _fail(self, loop: str, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.log.error(f"{self.name}.loop_died", loop=loop, error=repr(exc))
        self._stop.set()

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        """A task started through `group` (not a named loop) raised: that is fatal too."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.fatal is None:
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            self._fail("group", exc)

    async def _cancel_loops(self) -> None:
        """Cancel the loops until their group is done. Python 3.11's `asyncio.wait_for` can
        swallow a cancellation that lands as its inner await completes, so one `cancel()` may
        not be enough."""
        runner = self._runner
        while runner is not None and not runner.done():
            for task in (*self._loops, runner):
                if not task.done():
                    task.cancel()
            await asyncio.wait({runner}, timeout=0.5)
        if runner is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner  # its error, if any, is `self.fatal` (see `_runner_done`)
        self._group = None

    async def _unless_stopped(self, step: Coroutine[Any, Any, None]) -> None:
        """Run one start-up step; cancel it if a stop is requested (or a loop dies) first."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.cancelled():
            task.result()


def service_bus(
    settings: Settings,
    client_id: str,
    source: str,
    *,
    will: tuple[str, bytes, bool] | None = None,
    on_connect: Callable[[Bus], Awaitable[None]] | None = None,
) -> Bus:
    """A service's MQTT connection: a persistent session under a stable `client_id`, so the
    broker keeps its subscriptions and queues its QoS 1 messages while it is away."""
    return Bus(
        settings.resolved_mqtt_url(),
        client_id=client_id,
        root=settings.topic_root,
        persistent=True,
        keepalive=settings.keepalive,
        will=will,
        source=source,
        on_connect=on_connect,
    )


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a task's outcome as seen (a cancelled drain may end after its caller moved on)."""
    if not task.cancelled():
        task.exception()


async def serve(service: Service) -> None:
    """Run `service` until SIGTERM or SIGINT (or until a loop dies: its error is raised)."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:  # before starting: a signal during start-up stops cleanly
        loop.add_signal_handler(sig, service.request_stop)
    try:
        async with service:
            await service.wait_stopped()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def service_parser(name: str, description: str, *, eventlog: bool = False, client_id: bool = False) -> argparse.ArgumentParser:
    """`python -m ember.<name>`'s parser with the flags every service takes; each flag's `dest`
    is a settings field, so `settings_from` passes the given ones over the `EMBER_*` variables."""
    parser = argparse.ArgumentParser(prog=f"python -m ember.{name}", description=description)
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port (EMBER_MQTT_URL; default: the one `ember up` recorded)")
    if eventlog:
        parser.add_argument("--eventlog-url", help="sqlite:///path or mongodb://... (EMBER_EVENTLOG_URL; default: the home's SQLite)")
    parser.add_argument("--home", help="Ember home folder (EMBER_HOME; default: ~/.ember)")
    if client_id:
        parser.add_argument("--client-id", dest=f"{name}_client_id", help=f"MQTT client id (EMBER_{name.upper()}_CLIENT_ID)")
    parser.add_argument("--log-level", help="debug, info, warning, error (EMBER_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="(EMBER_LOG_FORMAT)")
    return parser


def settings_from(cls: type[S], parser: argparse.ArgumentParser, argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> S:
    """Settings from the environment (`env`, default `os.environ`), the given flags winning."""
    flags = {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not None}
    return cls.from_env(env, **flags)


def run_main(name: str, settings: Callable[[], S], service: Callable[[S], Service]) -> int:
    """Parse the settings, configure logging, serve until stopped; the process's exit code."""
    try:
        config = settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        error = InvalidSettings(f"invalid settings: {problems}")
        print(f"ember {name}: {error.message}", file=sys.stderr)
        return error.exit_code
    except ValueError as exc:
        error = InvalidSettings(f"invalid settings: {exc}")
        print(f"ember {name}: {error.message}", file=sys.stderr)
        return error.exit_code
    ember_log.configure(config.log_format, config.log_level, service=name)
    logger = ember_log.get_logger(f"ember.{name}")

    async def main() -> None:
        await serve(service(config))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_OK
    except EmberError as exc:
        logger.error(f"{name}.failed", error=exc.message, code=exc.code, exit_code=exc.exit_code)
        return exc.exit_code
    except Exception:
        logger.exception(f"{name}.crashed", exit_code=EXIT_CRASHED)
        return EXIT_CRASHED
    return EXIT_OK
