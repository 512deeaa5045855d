"""A node's own copy of each job's code and environment, for the process runtime.

A `bundle` artifact names a code bundle and the job's requirements, nothing on another host's
disk. Before an actor starts, its node fetches the bundle by digest from `bundles/{digest}`
(over the broker the actor itself is told to use, `EMBER_MQTT_URL` / `EMBER_TOPIC_ROOT` in its
spec), verifies and unpacks it, and prepares a venv for the requirements (ember.venvs), both
cached by hash under the node's folder:

    <node dir>/code/bundles/<hex>/   the code, PYTHONPATH and working folder of the actor
    <node dir>/code/venvs/<key>/     the venv, when this interpreter lacks a requirement

`EMBER_FLAMELET_PIP_ARGS` (e.g. `--no-index --find-links /srv/wheels`) is passed to pip.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from ember.bundle import cached, unpack_cached
from ember.bundle_bus import fetch_bundle
from ember.errors import EmberError
from ember.events import ActorSpec
from ember.flamelet.runtime import StartFailed
from ember.flamelet.settings import FlameletSettings
from ember.venvs import BuildError, BuildRun, ensure_venv


class CodeCache:
    def __init__(self, root: Path, *, mqtt_url: str = "", topic_root: str = "ember/v1", pip_args: list[str] | None = None,
                 fetch_timeout: float = 30.0, pip_timeout: float = 900.0) -> None:
        self.root = root
        self.mqtt_url = mqtt_url
        self.topic_root = topic_root
        self.pip_args = pip_args or []
        self.fetch_timeout = fetch_timeout
        self.pip_timeout = pip_timeout
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_env(cls, root: Path, env: Mapping[str, str]) -> CodeCache:
        """From the flamelet's settings in `env` (`EMBER_FLAMELET_PIP_ARGS`, `EMBER_BUNDLE_FETCH_TIMEOUT`)."""
        settings = FlameletSettings.from_env(env)
        return cls(root, mqtt_url=settings.mqtt_url, topic_root=settings.topic_root,
                   pip_args=shlex.split(settings.flamelet_pip_args), fetch_timeout=settings.bundle_fetch_timeout)

    async def prepare(self, spec: ActorSpec) -> tuple[str, str]:
        """(python, code folder) on this node for `spec`'s bundle artifact; StartFailed saying why not."""
        digest = spec.artifact.bundle
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:  # actors of one job on one node fetch and build once
            try:
                folder = await self._code(spec)
                venv = await asyncio.to_thread(
                    ensure_venv, self.root / "venvs", spec.artifact.requirements, BuildRun(),
                    pip_args=self.pip_args, timeout=self.pip_timeout, cwd=folder, salt=digest,
                )
            except StartFailed:
                raise
            except BuildError as exc:
                raise StartFailed(f"cannot prepare the job's environment on this node: {exc.reason}",
                                  details={"log_tail": exc.log_tail}) from None
            except EmberError as exc:
                raise StartFailed(f"cannot fetch the job's code: {exc.message}") from None
        python = str(venv / "bin" / "python") if venv is not None else sys.executable
        return python, str(folder)

    async def _code(self, spec: ActorSpec) -> Path:
        digest = spec.artifact.bundle
        bundles = self.root / "bundles"
        folder = cached(digest, bundles)
        if folder is not None:
            return folder
        url = spec.env.get("EMBER_MQTT_URL") or self.mqtt_url
        root = spec.env.get("EMBER_TOPIC_ROOT") or self.topic_root
        if not url:
            raise StartFailed("cannot fetch the job's code: no broker URL (EMBER_MQTT_URL) for this node")
        data = await fetch_bundle(url, root, digest, wait=self.fetch_timeout, client_id=None)
        return await asyncio.to_thread(unpack_cached, data, digest, bundles)
