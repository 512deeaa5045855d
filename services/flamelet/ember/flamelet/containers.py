"""The `docker` runtime: each actor is a container of its job's image (Docker SDK for Python).

Per actor:
- the image the artifact names (`repo@sha256:…`), pulled by digest when the engine lacks it;
  `prepare` reports bytes done/total while it pulls;
- one container, `ember.<actor>.<scope hash>`, labelled with job, actor, role, node, generation,
  the flamelet's scope (its actors folder: several flamelets may share one engine) and the
  spec it was started from, so a restarted flamelet adopts it instead of starting a second one;
- host networking (the broker, MLflow and the node's mldata are reached at the addresses the
  actor's env names), the flamelet's own `EMBER_*` settings with the spec's env on top, an init
  process as PID 1 (so SIGTERM reaches the actor), the job's `resources` applied (cpus -> CPU
  quota, memory_mb -> memory limit with no swap on top, so going over it is an OOM kill), the
  MLflow store's folder when the tracking URI is a local file, the node's mldata folder
  read-only, and the files the actor's MQTT credentials are read from (`CREDENTIAL_FILES`: its
  identity bundle, TLS CA/cert/key) read-only at the same paths, so the actor connects to a
  secured broker as the flamelet's env says, with no password in the container's environment;
- its stdout and stderr copied by a thread into `<actors>/<actor>.log` (the supervisor tails it).
A forgotten actor's container is removed, and the images this node pulled beyond the
`keep_images` most recently used are removed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from pydantic import ValidationError

from ember.events import ActorSpec
from ember.flamelet.images import ImageUse, PullTracker
from ember.flamelet.process import describe_code
from ember.flamelet.runtime import ActorExit, PullProgress, StartFailed
from ember.jobspec import ResourceSpec
from ember.log import get_logger

log = get_logger("ember.flamelet.containers")
T = TypeVar("T")
DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
PULL_POLL = 0.25
"""How often a pull's progress is looked at (the supervisor throttles what it reports)."""


def _why(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()[:500]


def limits(spec: ActorSpec) -> ResourceSpec:
    """The job spec's `resources` (defaults when absent), as placement reserved them."""
    try:
        job_spec = json.loads(spec.env.get("EMBER_JOB_SPEC") or "{}")
        return ResourceSpec.model_validate(job_spec.get("resources") or {})
    except (ValueError, ValidationError, AttributeError) as exc:
        raise StartFailed(f"unusable resources in the job spec: {exc}") from None


def describe_exit(state: Mapping[str, Any], memory_mb: int | None, killed_after: float | None) -> ActorExit:
    """How a container ended, from the engine's `State`; an OOM kill says so first."""
    code = state.get("ExitCode")
    code = int(code) if isinstance(code, int) else None
    if code is not None and code > 128:
        reason = f"exited with code {code} ({describe_code(128 - code)})"
    else:
        reason = describe_code(code)
    if state.get("OOMKilled"):
        limit = f" (limit {memory_mb} MiB)" if memory_mb else ""
        reason = f"out of memory{limit}: the kernel killed it; {reason}"
    elif killed_after is not None:
        reason = f"stopped: SIGTERM, then SIGKILL after {killed_after:g}s; {reason}"
    if state.get("Error"):
        reason = f"{reason}; engine: {state['Error']}"
    return ActorExit(code, reason)


def in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run a blocking call that may last as long as a container in a daemon thread (an executor
    thread would hold up the interpreter's exit while a container outlives its flamelet)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, daemon=True, name="ember-docker-wait").start()
    return future


class ContainerActor:
    """One actor container (started here, or adopted from an earlier flamelet)."""

    def __init__(self, runtime: DockerRuntime, spec: ActorSpec, container_id: str, *, pid: int | None,
                 memory_mb: int | None, exit: ActorExit | None = None, logs_since: float | None = None) -> None:
        self.runtime = runtime
        self.spec = spec
        self.id = container_id
        self.log_path = runtime.actors_dir / f"{spec.actor}.log"
        self.memory_mb = memory_mb
        self._pid = pid
        self._exit = exit
        self._killed_after: float | None = None
        self._waiter: asyncio.Future[ActorExit] | None = None
        self._logs: threading.Thread | None = None
        if exit is None:
            self._logs = threading.Thread(target=self._copy_logs, args=(logs_since,), daemon=True, name="ember-docker-logs")
            self._logs.start()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def finished(self) -> ActorExit | None:
        return self._exit

    def _copy_logs(self, since: float | None) -> None:
        """Append the container's output to its log file until the container ends."""
        try:
            stream = self.runtime.api.logs(self.id, stream=True, follow=True, since=since)
            with open(self.log_path, "ab") as out:
                for chunk in stream:
                    out.write(chunk)
                    out.flush()
        except (*DOCKER_ERRORS, OSError) as exc:
            log.warning("flamelet.container_logs_failed", actor=self.spec.actor, reason=_why(exc))

    def _wait_blocking(self) -> ActorExit:
        try:
            self.runtime.api.wait(self.id, timeout=None)
            state = self.runtime.api.inspect_container(self.id)["State"]
        except DOCKER_ERRORS as exc:
            return ActorExit(None, f"lost: the Docker engine no longer knows its container ({_why(exc)})")
        finally:
            if self._logs is not None:
                self._logs.join(timeout=5.0)  # the stream ends with the container: every line is in the file
        return describe_exit(state, self.memory_mb, self._killed_after)

    async def wait(self) -> ActorExit:
        if self._exit is not None:
            return self._exit
        if self._waiter is None:
            self._waiter = in_thread(self._wait_blocking)
        self._exit = await asyncio.shield(self._waiter)
        return self._exit

    async def stop(self, grace: float) -> None:
        if self._exit is not None:
            return
        if not await self._signal("SIGTERM"):  # the init process forwards it to the actor
            await self.wait()
            return
        try:
            await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            self._killed_after = grace
            await self._signal("SIGKILL")
            await self.wait()

    async def _signal(self, sig: str) -> bool:
        try:
            await asyncio.to_thread(self.runtime.api.kill, self.id, sig)
            return True
        except DOCKER_ERRORS:  # not running any more (or gone): wait() tells how it ended
            return False


CREDENTIAL_FILES = ("EMBER_IDENTITY", "EMBER_MQTT_CA_FILE", "EMBER_MQTT_CERT_FILE", "EMBER_MQTT_KEY_FILE")
"""Settings naming files an actor reads its MQTT credentials from (mounted read-only)."""


class DockerRuntime:
    """Actors as containers through one Docker engine; see the module docstring."""

    name = "docker"

    def __init__(self, client: docker.DockerClient, actors_dir: Path, *, node: str, base_env: Mapping[str, str] | None = None,
                 mldata_dir: Path | None = None, keep_images: int = 3) -> None:
        self.client = client
        self.api = client.api
        self.actors_dir = actors_dir
        self.node = node
        self.scope = str(actors_dir.resolve())
        self.tag = hashlib.sha256(self.scope.encode()).hexdigest()[:10]
        env = dict(os.environ if base_env is None else base_env)
        self.base_env = {k: v for k, v in env.items() if k.startswith("EMBER_")}
        self.mldata_dir = mldata_dir
        self.images = ImageUse(actors_dir.parent / "images.json", keep=keep_images)
        actors_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def connect(cls, actors_dir: Path, *, node: str, timeout: float = 5.0, **kwargs: Any) -> DockerRuntime | None:
        """The runtime when a Docker engine answers (`DOCKER_HOST` or the default socket), else None."""
        try:
            client = docker.from_env(timeout=timeout, max_pool_size=64)
            client.ping()
        except DOCKER_ERRORS as exc:
            log.info("flamelet.docker_unavailable", node=node, reason=_why(exc))
            return None
        client.api.timeout = 120  # engine calls such as create or remove can be slow on a busy host
        return cls(client, actors_dir, node=node, **kwargs)

    # --- labels and names --------------------------------------------------------------------
    def labels(self, spec: ActorSpec) -> dict[str, str]:
        return {
            "ember.job": spec.job,
            "ember.actor": spec.actor,
            "ember.role": spec.role.value,
            "ember.node": self.node,
            "ember.generation": spec.env.get("EMBER_GENERATION", ""),
            "ember.scope": self.scope,
            "ember.spec": spec.model_dump_json(),
        }

    def container_name(self, actor: str) -> str:
        if not actor or "/" in actor or actor.startswith(".") or "\x00" in actor:
            raise StartFailed(f"invalid actor id {actor!r}")
        safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in actor)
        return f"ember.{safe}.{self.tag}"

    @staticmethod
    def image_of(spec: ActorSpec) -> str:
        if spec.artifact.kind != "image" or not spec.artifact.image:
            raise StartFailed(f"the 'docker' runtime needs an image artifact; this one is a {spec.artifact.kind!r} without an image")
        return spec.artifact.image

    # --- the runtime protocol ----------------------------------------------------------------
    async def prepare(self, spec: ActorSpec, progress: PullProgress) -> None:
        """Pull the actor's image by digest unless the engine has it, reporting bytes as it goes."""
        image = self.image_of(spec)
        if await asyncio.to_thread(self._has_image, image):
            return
        tracker = PullTracker()
        pulling = in_thread(lambda: self._pull(image, tracker))
        reported = (-1, -1)
        while not pulling.done():
            await asyncio.wait({pulling}, timeout=PULL_POLL)
            if tracker.bytes != reported and not pulling.done():
                reported = tracker.bytes
                await progress(*reported)
        pulling.result()
        await progress(tracker.bytes[1], tracker.bytes[1])
        log.info("flamelet.image_pulled", actor=spec.actor, image=image, bytes=tracker.bytes[1])

    def _has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except DOCKER_ERRORS as exc:
            raise StartFailed(f"the Docker engine did not answer about image {image}: {_why(exc)}") from None

    def _pull(self, image: str, tracker: PullTracker) -> None:
        repository, _, digest = image.partition("@")
        tag = digest or None
        if not digest and ":" in repository.rsplit("/", 1)[-1]:
            repository, _, tag = repository.rpartition(":")
        try:
            for event in self.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise StartFailed(f"cannot pull image {image}: {event['error']}")
                tracker.update(event)
        except DOCKER_ERRORS as exc:
            raise StartFailed(f"cannot pull image {image}: {_why(exc)}") from None

    async def start(self, spec: ActorSpec) -> ContainerActor:
        image = self.image_of(spec)
        name = self.container_name(spec.actor)
        resources = limits(spec)
        options = self._options(spec, resources)
        try:
            container_id, pid = await asyncio.to_thread(self._run, image, name, options)
        except StartFailed:
            raise
        except docker.errors.ImageNotFound:
            raise StartFailed(f"image {image} is not on this node (and was not pulled)") from None
        except DOCKER_ERRORS as exc:
            raise StartFailed(f"cannot start the container: {_why(exc)}") from None
        self.images.used(image)
        log.info("flamelet.container_started", actor=spec.actor, container=name, image=image,
                 cpus=resources.cpus, memory_mb=resources.memory_mb)
        return ContainerActor(self, spec, container_id, pid=pid, memory_mb=resources.memory_mb)

    def _options(self, spec: ActorSpec, resources: ResourceSpec) -> dict[str, Any]:
        python = spec.artifact.python or "python3"
        env = {**self.base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        if spec.artifact.code_dir:
            env["PYTHONPATH"] = spec.artifact.code_dir
        volumes: dict[str, dict[str, str]] = {}
        store = mlflow_store_dir(env.get("EMBER_MLFLOW_TRACKING_URI", ""))
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
            volumes[str(store)] = {"bind": str(store), "mode": "rw"}
        if self.mldata_dir is not None and self.mldata_dir.is_dir():
            env.setdefault("EMBER_MLDATA_DATA_DIR", str(self.mldata_dir))
            volumes.setdefault(str(self.mldata_dir), {"bind": str(self.mldata_dir), "mode": "ro"})
        for name in CREDENTIAL_FILES:
            path = Path(env[name]).expanduser().resolve() if env.get(name) else None
            if path is not None and path.is_file():
                env[name] = str(path)
                volumes.setdefault(str(path), {"bind": str(path), "mode": "ro"})
        memory = f"{resources.memory_mb}m"
        return {
            "entrypoint": [python, "-m", spec.module, *spec.args],
            "command": [],
            "environment": env,
            "labels": self.labels(spec),
            "network_mode": "host",
            "init": True,
            "nano_cpus": int(resources.cpus * 1e9),
            "mem_limit": memory,
            "memswap_limit": memory,
            "volumes": volumes,
        }

    def _run(self, image: str, name: str, options: dict[str, Any]) -> tuple[str, int | None]:
        try:
            container = self.client.containers.create(image, name=name, **options)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            self._remove(name)  # a leftover of an actor that was never forgotten
            container = self.client.containers.create(image, name=name, **options)
        container.start()
        container.reload()
        return container.id or "", container.attrs["State"].get("Pid") or None

    async def adopt(self) -> list[ContainerActor]:
        try:
            containers = await asyncio.to_thread(self.client.containers.list, all=True, filters={"label": f"ember.scope={self.scope}"})
        except DOCKER_ERRORS as exc:
            log.warning("flamelet.adopt_failed", runtime=self.name, reason=_why(exc))
            return []
        found = []
        for container in containers:
            try:
                spec = ActorSpec.model_validate_json(container.labels["ember.spec"])
                resources = limits(spec)
            except (KeyError, ValueError, StartFailed) as exc:
                log.warning("flamelet.adopt_skipped", container=container.name, reason=str(exc)[:300])
                continue
            state = container.attrs["State"]
            log_path = self.actors_dir / f"{spec.actor}.log"
            if state.get("Running"):
                since = log_path.stat().st_mtime if log_path.exists() else None
                found.append(ContainerActor(self, spec, container.id or "", pid=state.get("Pid") or None,
                                            memory_mb=resources.memory_mb, logs_since=since))
            else:
                exit = describe_exit(state, resources.memory_mb, None)
                found.append(ContainerActor(self, spec, container.id or "", pid=None, memory_mb=resources.memory_mb, exit=exit))
        return found

    async def forget(self, actor: str) -> None:
        """Remove the actor's container, then the images beyond the most recent `keep_images`."""
        try:
            await asyncio.to_thread(self._remove, self.container_name(actor))
            await asyncio.to_thread(self.images.collect, self.client)
        except DOCKER_ERRORS as exc:
            log.warning("flamelet.container_not_removed", actor=actor, reason=_why(exc))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)


def mlflow_store_dir(uri: str) -> Path | None:
    """The folder of a local MLflow store (`sqlite:///…` or `file://…`, or a plain path), else None."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    else:
        path = Path(uri)
    return path if path.is_absolute() else None
