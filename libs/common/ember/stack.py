"""The local stack: a private Mosquitto, MLflow's tracking server, the control plane and N
flamelets, each its own OS process.

Used by `ember up`, the end-to-end tests, the demo and the benchmarks:

    with Stack(home, flamelets=3) as stack:      # starts everything, waits until ready
        stack.kill("manager")                     # SIGKILL one process by name ...
        stack.restart("manager")                  # ... and start it again
    # ordered shutdown: flamelets, then mldata and services, broker last

Process names: `mosquitto`, `mlflow`, `registry` (docker runtime), `manager`, `builder`, `notifier`,
`node-1..N` (flamelets, node id `node-i`) and `mldata-1..N` (the node's mldata). Every line a process prints goes to
`$EMBER_HOME/logs/<name>.log` and, when `echo` is set, to `echo` prefixed by the name.

Security is on by default (`secure`): on first start the stack provisions identities under
`$EMBER_HOME/pki` (`ember.security`), runs Mosquitto with no anonymous access, the password file
and the ACL generated from the topic map, and gives each process its own identity: `manager`,
`builder`, `notifier`; `node-i` for `node-i` and `mldata-i`; the local operator (the login name)
for the readiness check, the dashboard and, through `broker.json`, every CLI command on this home.
`secure=False` (`ember up --insecure`, `EMBER_INSECURE=1`) runs the broker open.

Tracking: unless the environment names a tracking server (`EMBER_MLFLOW_TRACKING_URI`), the stack
runs MLflow's own (`ember.tracking_server`); every service and actor gets its URL as
`EMBER_MLFLOW_TRACKING_URI`, and `$EMBER_HOME/broker.json` records it for the CLI
(`Settings.resolved_mlflow_uri`). The server is started first and takes several times longer than
the rest of the stack to answer (docs/benchmarks.md, "Local stack start-up"), so the stack is ready
without it: a thread waits for it and says when it answers (`await_tracking=True`, or
`wait_tracking()`, waits before going on). Until then an aggregator's MLflow client retries.

`run_until_signal` (what `ember up` runs) also supervises: a process that exits unexpectedly is
restarted with capped exponential backoff, and given up on after a crash loop (`RestartPolicy`).
A process restarts with the argv and environment it was started with: the broker with the
secured config file, every other process with its own identity.

Process handling itself (spawn, output, signals, groups) is `ember.processes.ProcessGroup`:
blocking work, so this class is synchronous; `async with` runs start/stop in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ember import topics
from ember.bus import Bus, Message
from ember.errors import EmberError, RequestTimeout, Unavailable
from ember.settings import Settings
from ember.broker import mosquitto_binary, mosquitto_config
from ember.processes import Proc, ProcessGroup, RestartPolicy, free_port, wait_for_port
from ember.security.mqtt import MqttSecurity
from ember import tracking_server

SERVICES = ("manager", "builder", "notifier")


class StackError(EmberError):
    code = "unavailable"
    exit_code = 6


@dataclass
class Stack:
    """Runs the local stack in `home`; see the module doc."""

    home: Path
    flamelets: int = 3
    mqtt_url: str | None = None
    """An existing broker; None: start a private Mosquitto (unless `EMBER_MQTT_URL` is set in `env`)."""
    env: Mapping[str, str] | None = None
    echo: IO[str] | None = None
    color: bool | None = None
    grace: float = 10.0
    mldata: bool = True
    mqtt_port: int = 0
    services: tuple[str, ...] = SERVICES
    """Control-plane services to start (all three by default)."""
    secure: bool | None = None
    """Authentication and the ACL on the private broker; None: on unless `EMBER_INSECURE` is set."""
    tracking: bool = True
    """Run MLflow's tracking server (unless `EMBER_MLFLOW_TRACKING_URI` is set in `env`)."""
    await_tracking: bool = False
    """`start` also waits until the tracking server answers."""
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    tracking_uri: str = field(default="", init=False)
    """Where actors log to MLflow: the stack's server, the environment's URI, or `none`."""
    registry: bool = False
    """Docker runtime: start a private image registry (`registry`, storage under `home/registry`)
    unless `EMBER_REGISTRY` names one; the services get its address in `EMBER_REGISTRY`."""
    ui: bool = True
    """Start the web dashboard (`ember.ui`, process `ui`) on `ui_port` (0: a free port)."""
    ui_port: int = 0
    metrics: bool = True
    """Give each service a free port for its Prometheus `/metrics` (`metrics_urls`)."""
    metrics_urls: dict[str, str] = field(default_factory=dict, init=False)
    url: str = field(default="", init=False)
    registry_address: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        base = dict(os.environ if self.env is None else self.env)
        self.mqtt_url = self.mqtt_url or base.get("EMBER_MQTT_URL") or None
        self._base_env = base
        if self.secure is None:
            self.secure = not Settings.from_env(base).insecure
        self._identities: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._owns_state = False
        if self.color is None:
            self.color = bool(self.echo is not None and hasattr(self.echo, "isatty") and self.echo.isatty())
        self.group = ProcessGroup(self.home / "logs", cwd=self.home, echo=self.echo, color=self.color, grace=self.grace)

    @property
    def procs(self) -> dict[str, Proc]:
        """Every process by name (`mosquitto`, `manager`, ..., `node-1`, `mldata-1`)."""
        return self.group.procs

    # --- public API ------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.flamelets + 1)]

    @property
    def broker_file(self) -> Path:
        return self.home / "broker.json"

    def mldata_file(self, node: str) -> Path:
        return self.home / "nodes" / node / "mldata.json"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Stack:
        await asyncio.to_thread(self.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def start(self, *, ready_timeout: float = 90.0) -> Stack:
        """Start the broker, services, mldata and flamelets; return once the stack is ready."""
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self._refuse_second_stack()
        self._stopped = False
        self._start_tracking()  # the slowest to start: first, so everything else overlaps it
        if self.mqtt_url:
            self.url = self.mqtt_url
        else:
            self._start_broker()
        recorded: dict[str, object] = {"url": self.url, "pid": os.getpid(), "mlflow": self.tracking_uri}
        if self._identities:
            recorded["identity"] = str(self._identities[self.operator])
        self.broker_file.write_text(json.dumps(recorded) + "\n")
        self._owns_state = True
        if self.registry:
            self._start_registry()
        env = self._service_env()
        for name in self.services:
            self.group.add(name, [sys.executable, "-m", f"ember.{name}"], self._as(self._metered(name, env), name), group=1)
        if self.ui:
            self.ui_port = self.ui_port if self.ui_port and _port_free(self.ui_port) else free_port()  # busy: another one
            self.group.add("ui", [sys.executable, "-m", "ember.ui", "--port", str(self.ui_port)], self._as(self._metered("ui", env), self.operator), group=1)
        mldata = {node: self._add_mldata(i, node, env) for i, node in enumerate(self.nodes, 1)} if self.mldata else {}
        for name in [*self.services, *(["ui"] if self.ui else []), *(f"mldata-{i}" for i in range(1, len(mldata) + 1))]:
            self.group.spawn(self.procs[name])
        if self.ui:
            self._wait_listening("ui", self.ui_port)
        for node, (port, _) in mldata.items():
            self._wait_listening(f"mldata-{node.split('-')[1]}", port)
        for i, node in enumerate(self.nodes, 1):
            fenv = self._as(dict(self._metered(f"node-{i}", env), EMBER_NODE_ID=node), node)
            if node in mldata:
                port, token = mldata[node]
                fenv.update(
                    EMBER_MLDATA_URL=f"grpc://127.0.0.1:{port}",
                    EMBER_MLDATA_TOKEN=token,
                    EMBER_MLDATA_DATA_DIR=str(self.node_data_dir(node)),
                )
            self.group.spawn(self.group.add(f"node-{i}", [sys.executable, "-m", "ember.flamelet", "--node", node], fenv, group=3))
        self.wait_ready(ready_timeout)
        return self

    # --- security (see the module doc) ----------------------------------------------------
    @property
    def operator(self) -> str:
        """The local operator's principal: the login name when it is a valid user name, else `operator`."""
        from ember.security.identities import check_name

        try:
            return check_name(getpass.getuser(), "user")
        except (ValueError, OSError, KeyError):
            return "operator"

    def identity(self, principal: str) -> Path | None:
        """The bundle of `principal` (`manager`, `node-1`, `devices-node-1`, the operator); None when insecure."""
        return self._identities.get(principal)

    def security(self, principal: str | None = None) -> MqttSecurity:
        """How a client connects as `principal` (default: the operator); when the stack holds no
        identities (insecure, or an external broker), as the environment says."""
        bundle = self._identities.get(principal or self.operator)
        return MqttSecurity.from_identity(bundle) if bundle else MqttSecurity.from_env(self._base_env)

    def _as(self, env: dict[str, str], principal: str) -> dict[str, str]:
        """`env` for a process that connects as `principal` (its own bundle, nothing inherited)."""
        if not self._identities:
            return env
        env = {k: v for k, v in env.items() if k not in ("EMBER_MQTT_USERNAME", "EMBER_MQTT_PASSWORD")}
        env["EMBER_IDENTITY"] = str(self._identities[principal])
        return env

    def _secure(self, plain_config: str) -> str:
        from ember.security.broker import secure_broker
        from ember.security.identities import UserRole

        secured = secure_broker(
            self.home, plain_config, nodes=self.nodes, users={self.operator: UserRole.operator}, actors_as_node=True
        )
        self._identities = dict(secured.identities)
        return secured.config

    def node_data_dir(self, node: str) -> Path:
        return self.home / "nodes" / node / "data"

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the manager answers `nodes.list` with every flamelet online (or a process dies);
        with `await_tracking`, also until the tracking server answers."""
        _run_in_thread(lambda: self._await_ready(timeout))
        tracking = self.tracking_uri
        if "mlflow" in self.procs:
            if self.await_tracking:
                self.wait_tracking(timeout)
            else:
                tracking += " (starting)"
                threading.Thread(target=self._watch_tracking, args=(timeout,), name="stack-mlflow", daemon=True).start()
        self.group.say("stack", f"ready: broker {self.url}, MLflow {tracking}, {self.flamelets} flamelet(s), home {self.home}")
        if self.ui:
            self.group.say("stack", f"dashboard: {self.ui_url}")
        if self.metrics_urls:
            self.group.say("stack", "metrics: " + ", ".join(f"{name} {url}" for name, url in self.metrics_urls.items()))

    def wait_tracking(self, timeout: float = 90.0) -> None:
        """Until the stack's tracking server answers (at once when it runs none)."""
        if "mlflow" not in self.procs:
            return
        try:
            tracking_server.wait_healthy(self.tracking_uri, timeout=timeout, process=self.procs["mlflow"].popen)
        except (RuntimeError, TimeoutError) as exc:
            raise StackError(f"{exc}:\n{self.tail('mlflow')}") from None

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}/"

    def _metered(self, name: str, env: dict[str, str]) -> dict[str, str]:
        """`env` with a free `EMBER_METRICS_PORT` for process `name` (when `metrics` is on)."""
        if not self.metrics:
            return env
        port = free_port()
        self.metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
        return dict(env, EMBER_METRICS_PORT=str(port))

    def pid(self, name: str) -> int | None:
        return self.procs[name].pid if self.procs[name].alive() else None

    def kill(self, name: str, sig: int = signal.SIGKILL, *, timeout: float = 30.0) -> int:
        """Send `sig` (default SIGKILL) to one process and wait for it to exit; returns its status."""
        return self.group.kill(name, sig, timeout=timeout)

    def restart(self, name: str) -> None:
        """Stop one process (if alive, SIGTERM then SIGKILL after the grace) and start it again."""
        proc = self.procs[name]
        if proc.alive():
            self.group.stop_group([proc])
        self.group.spawn(proc)
        if name == "mosquitto":
            self._wait_listening(name, self._broker_port)

    def exited(self) -> dict[str, int]:
        """Processes that exited without being asked to: name -> exit status."""
        return self.group.exited()

    def log_path(self, name: str) -> Path:
        return self.group.log_path(name)

    def tail(self, name: str, lines: int = 20) -> str:
        """The last lines a process printed (from its log file)."""
        return self.group.tail(name, lines)

    def stop(self) -> None:
        """Ordered, idempotent shutdown: flamelets (their actors stop), mldata, services, broker."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.group.stop_all()
        if not self._owns_state:  # e.g. refused because another stack runs here: leave its files
            return
        with contextlib.suppress(FileNotFoundError):
            self.broker_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.home / "registry.json").unlink()
        for node in self.nodes:
            with contextlib.suppress(FileNotFoundError):
                self.mldata_file(node).unlink()

    def run_until_signal(self) -> int:
        """Block until SIGINT/SIGTERM, restarting processes that exit unexpectedly (see
        `RestartPolicy`), then stop in order."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.2):
                self.group.supervise(self.restart_policy)
        finally:
            self.group.say("stack", "shutting down")
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # --- internals -------------------------------------------------------------------------
    def _wait_listening(self, name: str, port: int, timeout: float = 60.0) -> None:
        try:
            wait_for_port("127.0.0.1", port, timeout=timeout, process=self.procs[name].popen)
        except (RuntimeError, TimeoutError) as exc:
            raise StackError(f"{name} is not listening on port {port} ({exc}):\n{self.tail(name)}") from None

    def _refuse_second_stack(self) -> None:
        """Two stacks on one home would share the event log and the services' client ids."""
        try:
            pid = int(json.loads(self.broker_file.read_text()).get("pid", 0))
        except (OSError, ValueError, AttributeError):
            return
        if pid and pid != os.getpid() and Path(f"/proc/{pid}").exists():
            raise StackError(f"a stack (pid {pid}) already runs with EMBER_HOME={self.home}: stop it first or use another --home")

    def _service_env(self) -> dict[str, str]:
        settings = Settings.from_env(self._base_env, home=str(self.home))
        env = dict(self._base_env)
        env.update(
            EMBER_HOME=str(self.home),
            EMBER_MQTT_URL=self.url,
            EMBER_EVENTLOG_URL=settings.resolved_eventlog_url(),
            EMBER_MLFLOW_TRACKING_URI=self.tracking_uri,
            PYTHONUNBUFFERED="1",
        )
        if self.registry_address:
            env["EMBER_REGISTRY"] = self.registry_address
        env.setdefault("EMBER_LOG_FORMAT", "console" if self.color else "json")
        return env

    def _start_broker(self) -> None:
        broker_dir = self.home / "broker"
        (broker_dir / "data").mkdir(parents=True, exist_ok=True)
        self._broker_port = self.mqtt_port or free_port()
        conf = broker_dir / "mosquitto.conf"
        config = mosquitto_config(self._broker_port, broker_dir / "data")
        conf.write_text(self._secure(config) if self.secure else config)
        try:
            binary = mosquitto_binary()
        except RuntimeError as exc:  # not installed: say what to install
            raise StackError(str(exc)) from None
        self.group.spawn(self.group.add("mosquitto", [binary, "-c", str(conf)], dict(self._base_env), group=0))
        self._wait_listening("mosquitto", self._broker_port, 30)
        self.url = f"mqtt://127.0.0.1:{self._broker_port}"

    def _watch_tracking(self, timeout: float) -> None:
        """Say when the tracking server answers; a server that exits first is waited for again
        once `ember up`'s supervision has restarted it (until `timeout`, or it is given up on)."""
        deadline = time.monotonic() + timeout
        proc = self.procs["mlflow"]
        while True:
            try:
                self.wait_tracking(max(0.1, deadline - time.monotonic()))
                break
            except StackError as exc:
                if self._stopped or proc.gave_up or time.monotonic() >= deadline:
                    if not self._stopped:
                        self.group.say("stack", f"the MLflow tracking server is not answering: {exc}")
                    return
            while not proc.alive() and not (self._stopped or proc.gave_up) and time.monotonic() < deadline:
                time.sleep(0.2)  # until the supervision has started it again
        took = time.monotonic() - self._tracking_started
        self.group.say("stack", f"MLflow tracking server answering at {self.tracking_uri} ({took:.1f}s after it was started)")

    def _start_tracking(self) -> None:
        """Start MLflow's server (not waited for here: it starts alongside the services) unless
        the environment names a tracking URI, which is then used as is."""
        given = self._base_env.get("EMBER_MLFLOW_TRACKING_URI", "")
        if given or not self.tracking:
            self.tracking_uri = given or "none"
            return
        if not tracking_server.available():
            raise StackError("MLflow's tracking server needs the full `mlflow` package (pip install mlflow), "
                             "or set EMBER_MLFLOW_TRACKING_URI to a server (`none` turns tracking off)")
        port = free_port()
        argv = tracking_server.server_argv(self.home, port)
        self.group.spawn(self.group.add("mlflow", argv, tracking_server.server_env(self._base_env), group=0))
        self._tracking_started = time.monotonic()
        self.tracking_uri = f"http://127.0.0.1:{port}"

    def _start_registry(self) -> None:
        """The image registry: `EMBER_REGISTRY` when set, else a private `docker-registry` on loopback."""
        self.registry_address = self._base_env.get("EMBER_REGISTRY", "")
        if self.registry_address:
            return
        from ember.registry import Registry, answers

        registry = Registry(free_port(), self.home / "registry")
        try:
            argv = registry.argv()
        except RuntimeError as exc:  # not installed: say what to install
            raise StackError(str(exc)) from None
        self.group.spawn(self.group.add("registry", argv, dict(self._base_env), group=0))
        self._wait_listening("registry", registry.port, 30)
        if not answers(registry.address, timeout=5):
            raise StackError(f"the registry on {registry.address} does not answer on /v2/:\n{self.tail('registry')}")
        self.registry_address = registry.address
        (self.home / "registry.json").write_text(json.dumps({"address": registry.address, "pid": os.getpid()}) + "\n")

    def _add_mldata(self, index: int, node: str, env: dict[str, str]) -> tuple[int, str]:
        port, token = free_port(), secrets.token_urlsafe(24)
        data_dir = self.node_data_dir(node)
        data_dir.mkdir(parents=True, exist_ok=True)
        state = self.mldata_file(node)
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"node": node, "url": f"grpc://127.0.0.1:{port}", "token": token, "data_dir": str(data_dir)}, fh)
        argv = [sys.executable, "-m", "ember.mldata", "--port", str(port), "--data-dir", str(data_dir), "--node", node]
        # the token travels in the environment: not visible in `ps`, and never parsed as an option
        menv = dict(self._metered(f"mldata-{index}", env), EMBER_NODE_ID=node, EMBER_MLDATA_TOKEN=token)
        self.group.add(f"mldata-{index}", argv, self._as(menv, node), group=2)
        return port, token

    async def _await_ready(self, timeout: float) -> None:
        wake = asyncio.Event()

        async def on_status(_message: Message) -> None:
            wake.set()

        bus = Bus(self.url, source="ember-stack", security=self.security())
        bus.subscribe(topics.NODE_STATUS, on_status)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing: set[str] = set(self.nodes)
        async with bus:
            while True:
                dead = self.exited()
                if dead:
                    name, code = next(iter(dead.items()))
                    raise StackError(f"{name} exited with status {code} during start-up:\n{self.tail(name)}")
                with contextlib.suppress(RequestTimeout, Unavailable):
                    nodes = await bus.request("nodes.list", timeout=1.0)
                    online = {n.get("node") for n in nodes or [] if n.get("status") == "online"}
                    missing = set(self.nodes) - online
                    if not missing:
                        return
                if loop.time() >= deadline:
                    raise StackError(f"stack not ready after {timeout:g}s (waiting for {sorted(missing) or 'the manager'})")
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.5)


def _run_in_thread(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine `factory()` on a fresh event loop in a daemon thread (callers may run
    inside a loop already); Ctrl-C interrupts the wait, not the process's exit."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="stack-ready", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (the dashboard's preferred port may be taken)."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
