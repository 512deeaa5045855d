"""`ember ui` as an `ember.service.Service`: a bus client (`Hub`) and uvicorn serving the app.

    python -m ember.ui [--port P] [--host H]      # also `ember ui`

The listening socket is bound in `open()` (so port 0 gets a free port, known before serving);
uvicorn runs as the service's one loop and does not install signal handlers of its own: a stop
goes through the service's lifecycle (`drain()` asks uvicorn to exit, open streams are cut after
a short grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

import uvicorn

from ember.bus import Bus
from ember.security.mqtt import MqttSecurity
from ember.service import Service, run_main, service_parser, settings_from
from ember.ui.app import create_app
from ember.ui.hub import Hub
from ember.ui.settings import UiSettings


class UiService(Service):
    name = "ui"

    def __init__(self, settings: UiSettings) -> None:
        super().__init__(grace=3.0)
        self.settings = settings
        self.role = settings.role()
        self.bus = Bus(
            settings.resolved_mqtt_url(),
            client_id=settings.ui_client_id or None,
            root=settings.topic_root,
            keepalive=settings.keepalive,
            source="ui",
            security=MqttSecurity.from_settings(settings),
        )
        self.hub = Hub(self.bus, min_interval=settings.ui_min_interval)
        self.app = create_app(self.hub, role=self.role, mlflow_ui=settings.ui_mlflow_url)
        self.socket: socket.socket | None = None
        self.server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        assert self.socket is not None
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/"

    async def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.ui_host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((self.settings.ui_host, self.settings.ui_port))
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off", access_log=False, ws="none")
        self.server = uvicorn.Server(config)
        self.server.capture_signals = _no_signals  # type: ignore[method-assign]
        await self.bus.start(wait=None)

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        assert self.server is not None and self.socket is not None
        return {"http": self._serve()}

    async def _serve(self) -> None:
        assert self.server is not None and self.socket is not None
        await self.server.serve(sockets=[self.socket])
        if not self._stop.is_set():
            await self._stop.wait()  # uvicorn exits only when asked (drain) or on a bind error (raised)

    async def ready(self) -> None:
        assert self.server is not None
        while not self.server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.02)

    async def drain(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            for feed in list(self.hub.feeds.values()):  # end the open streams: their generators close
                if feed.task is not None:
                    feed.task.cancel()

    async def close(self) -> None:
        await self.bus.shutdown()
        if self.socket is not None:
            self.socket.close()

    def started_fields(self) -> dict[str, Any]:
        return {"url": self.url, "role": self.role, "broker": self.bus.url}


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield


def parse_args(argv: Sequence[str] | None = None) -> UiSettings:
    parser = service_parser("ui", "The Ember web dashboard.")
    parser.add_argument("--host", dest="ui_host", help="address to bind (EMBER_UI_HOST; default 127.0.0.1)")
    parser.add_argument("--port", dest="ui_port", type=int, help="port (EMBER_UI_PORT; default 8765, 0: a free one)")
    parser.add_argument("--mlflow-ui", dest="ui_mlflow_url", help="MLflow UI URL for run links (EMBER_UI_MLFLOW_URL)")
    return settings_from(UiSettings, parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("ui", lambda: parse_args(argv), UiService)
