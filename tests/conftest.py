"""Shared fixtures: a private Mosquitto per test (real broker, free port) and an Ember home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.testing import Broker, private_broker


@pytest.fixture
def mqtt_broker() -> Iterator[Broker]:
    """A real Mosquitto on a free port, private to this test; `.url`, `.host`, `.port`, `.restart()`."""
    with private_broker() as broker:
        yield broker


@pytest.fixture
def ember_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty EMBER_HOME for this test (event log, venvs, logs live here)."""
    home = tmp_path / "ember-home"
    home.mkdir()
    monkeypatch.setenv("EMBER_HOME", str(home))
    return home


# The Docker fixtures (docker_client, docker_registry, ...) live in their own module.
from docker_fixtures import docker_client, docker_registry  # noqa: E402, F401
