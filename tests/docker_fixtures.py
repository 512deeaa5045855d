"""Docker fixtures: the real engine's client and a private registry, for the build and runtime tests.

    def test_x(docker_client, docker_registry): ...    # docker.DockerClient, ember.registry.Registry

Without an engine (not root, dockerd not running, `docker` SDK missing) or without the registry
binary the test is skipped with the reason; with `CI=true` it fails instead, so CI cannot pass by
skipping the Docker path. `make install` as root installs and starts everything these need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ember.registry import Registry, private_registry, registry_binary


def unavailable(reason: str) -> None:
    """Skip with `reason`, or fail under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the Docker path cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A `docker.DockerClient` on the local engine (pinged)."""
    try:
        import docker
    except ImportError:
        unavailable("the docker SDK is not installed (make install)")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine answers ({type(exc).__name__}: {exc}); as root, `make install` starts dockerd")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def docker_registry(docker_client: Any) -> Iterator[Registry]:
    """A private `docker-registry` on a free loopback port for this test; `.address` is host:port."""
    try:
        registry_binary()
    except RuntimeError as exc:
        unavailable(str(exc))
    with private_registry() as registry:
        yield registry
