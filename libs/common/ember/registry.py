"""The image registry: the CNCF distribution registry (Debian's `docker-registry`) run as a process.

`ember up --runtime docker` and the Docker tests start one on loopback with its storage in a local
folder; a deployment names its own with `EMBER_REGISTRY` (`host:port`, no scheme). The engine pulls
from 127.0.0.1 registries over plain HTTP; any other address needs TLS or `insecure-registries`.

    with private_registry() as registry:   # a free port, storage in a temporary folder
        registry.address                   # "127.0.0.1:PORT": the prefix of image repositories
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ember.processes import free_port, terminate, wait_until

REGISTRY_CANDIDATES = ("docker-registry", "registry")


def registry_binary() -> str:
    """The registry executable, or RuntimeError saying what to install."""
    for name in REGISTRY_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("the image registry is not installed: run 'make install' as root or 'apt-get install docker-registry'")


def registry_config(address: str, storage: Path) -> str:
    """A distribution 2.x config: filesystem storage, deletes allowed (image GC), HTTP on `address`."""
    return "\n".join(
        [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {address}",
            "",
        ]
    )


def answers(address: str, timeout: float = 1.0) -> bool:
    """True when `http://address/v2/` answers as a registry (200, or 401 behind auth)."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=timeout) as reply:
            return reply.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


@dataclass
class Registry:
    """A registry process serving `storage` on 127.0.0.1:`port`; `argv()` is its command line."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def write_config(self) -> Path:
        self.storage.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "registry.yml"
        conf.write_text(registry_config(self.address, self.storage))
        return conf

    def argv(self) -> list[str]:
        return [registry_binary(), "serve", str(self.write_config())]

    def start(self, timeout: float = 30.0) -> Registry:
        log = open(self.workdir / "registry.log", "ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                tail = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"docker-registry exited with {process.returncode}:\n{tail}")
            return answers(self.address, timeout=0.5)

        wait_until(up, timeout=timeout, interval=0.05, message=f"registry on {self.address} did not answer within {timeout}s")
        return self

    def stop(self) -> None:
        terminate(self.process)


@contextlib.contextmanager
def private_registry() -> Iterator[Registry]:
    """A registry on a free loopback port with storage in a temporary folder, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="ember-registry-") as tmp:
        registry = Registry(free_port(), Path(tmp)).start()
        try:
            yield registry
        finally:
            registry.stop()
