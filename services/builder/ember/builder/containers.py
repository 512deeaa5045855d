"""The builder's Docker and registry primitives, through the Docker SDK and the registry's HTTP API.

Image steps that install software run in a container with no network and a wheelhouse mounted
read-only, and are committed as one layer (the wheels never become part of the image); the code step
copies the code into a created container and commits it. Every call that can wait is bounded, and a
cancelled build kills its container.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ember.venvs import BuildError, BuildRun
from ember.venvs import tail as _tail

MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def docker_client(timeout: float = 300.0) -> Any:
    """A pinged `docker.DockerClient`, or a BuildError saying how to get an engine."""
    try:
        import docker
    except ImportError:
        raise BuildError("the docker runtime needs the `docker` Python package in the builder (pip install ember-builder)") from None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:
        raise BuildError(f"no Docker engine answers ({type(exc).__name__}: {exc}): start dockerd (as root, `make install` does)") from None
    return client


def find_image(client: Any, ref: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def run_and_commit(
    client: Any, image: str, command: list[str], ref: str, *, step: str, wheels: Path, changes: list[str],
    run: BuildRun, log: list[str], timeout: float,
) -> Any:
    """Run `command` in `image` (no network, `wheels` at /wheels read-only), commit the result as `ref`."""
    if run.cancelled:
        raise BuildError("build cancelled")
    log.append(f"step {step}: {' '.join(command)}")
    container = client.containers.create(
        image, command, network_mode="none", volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
        labels={"org.ember.build-step": step},
    )
    run.container = container
    try:
        container.start()
        status = _wait(container, run, timeout, step)
        output = container.logs().decode(errors="replace")
        log.extend(output.splitlines())
        if status != 0:
            errors = [line.removeprefix("ERROR: ") for line in output.splitlines() if line.startswith("ERROR")]
            detail = f": {errors[-1]}" if errors else ""
            raise BuildError(f"image step '{step}' failed (exit {status}){detail}", _tail(output))
        repository, tag = ref.rsplit(":", 1)
        container.commit(repository=repository, tag=tag, changes=changes)
    finally:
        run.container = None
        with contextlib.suppress(Exception):
            container.remove(force=True)
    return client.images.get(ref)


def _wait(container: Any, run: BuildRun, timeout: float, step: str) -> int:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(container.wait(timeout=1)["StatusCode"])
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            pass
        if run.cancelled:
            raise BuildError("build cancelled")
        if time.monotonic() > deadline:
            raise BuildError(f"image step '{step}' timed out after {timeout:g}s", _tail(container.logs().decode(errors="replace")))


def commit_files(client: Any, image: str, archive: bytes, dest: str, ref: str, *, changes: list[str]) -> Any:
    """A new layer over `image` holding `archive` (a tar) unpacked at `dest`, committed as `ref`."""
    container = client.containers.create(image, ["true"], network_mode="none")
    try:
        if not container.put_archive(dest, archive):
            raise BuildError(f"copying the code into the image at {dest} failed")
        repository, tag = ref.rsplit(":", 1)
        container.commit(repository=repository, tag=tag, changes=changes)
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
    return client.images.get(ref)


def registry_digest(registry: str, repository: str, tag: str, timeout: float = 5.0) -> str | None:
    """The manifest digest of `repository:tag` in `registry`, or None when it is not there."""
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD", headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise BuildError(f"image registry {registry} answered {exc.code} {exc.reason} for {repository}:{tag}") from None
    except OSError as exc:
        raise BuildError(unreachable(registry, exc)) from None


def unreachable(registry: str, exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    return (
        f"image registry {registry} cannot be reached ({reason}): start it (`ember up --runtime docker` runs one) "
        "or set EMBER_REGISTRY to a registry's host:port"
    )


def push(client: Any, repository: str, tag: str, log: list[str]) -> str:
    """Push `repository:tag`; the manifest digest the registry stored."""
    digest = ""
    try:
        for item in client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in item:
                raise BuildError(f"pushing {repository}:{tag} failed: {item['error']}", "\n".join(log[-20:]))
            aux = item.get("aux") or {}
            digest = aux.get("Digest", digest)
            if item.get("status") and item.get("id") is None:
                log.append(str(item["status"]))
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"pushing {repository}:{tag} failed: {exc}") from None
    if not digest:
        raise BuildError(f"pushing {repository}:{tag} reported no digest", json.dumps(log[-5:]))
    return digest
