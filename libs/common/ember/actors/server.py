"""The serving actor: a registered MLflow model answering predictions on a node.

    python -m ember.actors.server        # configured by the environment the notifier sets

It loads `models:/{EMBER_SERVE_MODEL}/{EMBER_SERVE_VERSION or the latest}` from
`EMBER_MLFLOW_TRACKING_URI` with `mlflow.pyfunc.load_model` and then:

- answers MLflow's scoring protocol over HTTP (`POST /invocations` with JSON `dataframe_split`,
  `dataframe_records`, `instances` or `inputs`, or CSV; `{"predictions": [...]}` back; `GET /ping`),
  parsing and encoding with MLflow's own `scoring_server.invocations`, on a stdlib threading
  HTTP server (a node installs no web framework). It binds `EMBER_SERVE_HOST` (default
  127.0.0.1) and `EMBER_SERVE_PORT` (default 0: a free port);
- publishes where it answers, retained, on `nodes/{node}/serving/{model}` (`ServingStatus`);
  its MQTT Last Will clears that message, and so does a clean stop;
- when `EMBER_SERVE_TAG` is set, subscribes to `data/{tag}` and publishes one `Prediction` per
  reading on `nodes/{node}/predictions/{model}`: the model's input columns are taken from the
  reading (all of its fields when the model has no signature).

SIGTERM stops it with exit code 0: a serving actor runs until it is no longer desired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ember import topics
from ember.envelope import Envelope, decode
from ember.events import ServingStatus
from ember.log import configure, get_logger
from ember.settings import Settings

EXIT_CONFIG = 2
PREDICTION_TYPE = "Prediction"


def load(tracking_uri: str, model: str, version: str) -> tuple[Any, str]:
    """The pyfunc model and the version it is (the latest registered one when `version` is empty)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if not version:
        versions = MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{model}'")
        if not versions:
            raise LookupError(f"model {model!r} has no registered version")
        version = str(max(int(v.version) for v in versions))
    return mlflow.pyfunc.load_model(f"models:/{model}/{version}"), version


def http_server(model: Any, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server answering `/invocations` with MLflow's scoring function."""
    from mlflow.pyfunc import scoring_server

    schema = model.metadata.get_input_schema()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: bytes | str, mimetype: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", mimetype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's hook name
            if self.path in ("/ping", "/health"):
                self._reply(200, "\n")
            else:
                self._reply(404, '{"error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/invocations":
                self._reply(404, '{"error": "not found"}')
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            result = scoring_server.invocations(  # type: ignore[no-untyped-call]
                body, self.headers.get("Content-Type") or "application/json", model, schema)
            self._reply(result.status, result.response, result.mimetype)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet per request
            pass

    return ThreadingHTTPServer((host, port), Handler)


def predict_readings(model: Any, readings: list[dict[str, Any]]) -> list[Any]:
    """One prediction per reading: the model's input columns (or every field) as one DataFrame."""
    import pandas as pd  # type: ignore[import-untyped]

    schema = model.metadata.get_input_schema()
    frame = pd.DataFrame.from_records(readings)
    if schema is not None and schema.has_input_names():
        frame = frame[schema.input_names()]
    predictions = model.predict(frame)
    values = predictions.to_numpy() if hasattr(predictions, "to_numpy") else predictions
    return [value.tolist() if hasattr(value, "tolist") else value for value in values]


async def run(settings: Settings, env: dict[str, str]) -> int:
    from ember.bus import Bus, Message

    actor, node = env.get("EMBER_ACTOR_ID", ""), settings.node_id
    name, tag = env.get("EMBER_SERVE_MODEL", ""), env.get("EMBER_SERVE_TAG", "")
    log = get_logger("ember.actors.server", actor=actor, node=node, model=name)
    if not (actor and node and name):
        log.error("server.failed", reason="EMBER_ACTOR_ID, EMBER_NODE_ID and EMBER_SERVE_MODEL are required")
        return EXIT_CONFIG
    try:
        model, version = await asyncio.to_thread(load, settings.resolved_mlflow_uri(), name, env.get("EMBER_SERVE_VERSION", ""))
    except Exception as exc:
        log.error("server.failed", reason=f"cannot load the model: {exc}"[:1000])
        return 1
    host = env.get("EMBER_SERVE_HOST", "127.0.0.1")
    server = http_server(model, host, int(env.get("EMBER_SERVE_PORT") or 0))
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    port = server.server_port
    root = settings.topic_root
    status_topic = topics.SERVING.format(root, node=node, model=name)
    out_topic = topics.PREDICTIONS.format(root, node=node, model=name)
    bus = Bus(settings.resolved_mqtt_url(), client_id=actor, root=root, source=actor, will=(status_topic, b"", True))

    async def on_readings(message: Message) -> None:
        readings = decode(message.payload).data.get("readings") or []
        if not readings:
            return
        predictions = await asyncio.to_thread(predict_readings, model, readings)
        for reading, prediction in zip(readings, predictions, strict=True):
            data = {"model": name, "version": version, "node": node, "reading": reading, "prediction": prediction}
            await bus.publish(out_topic, Envelope(type=PREDICTION_TYPE, source=actor, subject=name, data=data))

    if tag:
        bus.subscribe(topics.DATA, on_readings, raw=True, tag=tag)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await bus.start()
    try:
        status = ServingStatus(model=name, version=version, node=node, actor=actor, url=f"http://{host}:{port}", tag=tag)
        await bus.publish(status_topic, bus.envelope("ServingStatus", status.model_dump(mode="json"), subject=name), retain=True)
        log.info("server.serving", version=version, url=status.url, tag=tag)
        await stop.wait()
        await bus.publish(status_topic, b"", retain=True)
    finally:
        server.shutdown()
        await bus.shutdown()
    log.info("server.stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ember.actors.server` (no flags: the environment configures it)."""
    settings = Settings.from_env()
    configure(settings.log_format, settings.log_level, service="server")
    return asyncio.run(run(settings, dict(os.environ)))


if __name__ == "__main__":
    sys.exit(main())
