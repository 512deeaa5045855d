"""Content-addressed wheelhouses: requirements resolved on the builder host, installed offline in images.

Nothing inside an image build reaches a package index, so `pip wheel` runs here, on the host, with the
host's own index configuration (pip.conf, PIP_* variables, `EMBER_BUILDER_PIP_ARGS`), and the image
installs from the folder with `pip install --no-index --find-links`.

    <root>/<key>/*.whl          key: sha256 of (target Python, requirements, constraints, pip args)
              wheels.json       name, version and sha256 of every wheel; written last

A folder whose `wheels.json` exists is complete and is reused as is; a build goes to a staging
folder that is renamed into place, so a crash never leaves a half-filled wheelhouse that looks ready.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ember.builder.artifacts import STAGING_PREFIX
from ember.venvs import BuildError, BuildRun
from ember.venvs import run_tool as _run
from ember.venvs import tail as _tail

MANIFEST = "wheels.json"


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse folder and the wheels in it (file name -> sha256)."""

    path: Path
    wheels: dict[str, str]

    @property
    def digest(self) -> str:
        """sha256 over the wheels' names and contents: what the folder holds, not how it was asked for."""
        return hashlib.sha256(json.dumps(self.wheels, sort_keys=True).encode()).hexdigest()

    def pins(self) -> list[str]:
        """`name==version` of every wheel, for use as constraints by a later resolution."""
        pins = []
        for name in sorted(self.wheels):
            dist, version = name.split("-")[:2]
            pins.append(f"{dist.replace('_', '-')}=={version}")
        return pins


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(path: Path) -> Wheelhouse | None:
    try:
        return Wheelhouse(path, json.loads((path / MANIFEST).read_text()))
    except (OSError, ValueError):
        return None


def pip_failure(what: str, code: int, output: str) -> BuildError:
    """A BuildError whose reason carries pip's own last ERROR line."""
    errors = [line.removeprefix("ERROR: ") for line in output.splitlines() if line.startswith("ERROR")]
    detail = f": {errors[-1]}" if errors else ""
    return BuildError(f"{what} failed (pip exit {code}){detail}", _tail(output))


def resolve(
    requirements: list[str],
    root: Path,
    run: BuildRun,
    *,
    python: str,
    constraints: Sequence[str] = (),
    pip_args: Sequence[str] = (),
    timeout: float = 900.0,
) -> Wheelhouse:
    """Every wheel `requirements` need for CPython `python` ("3.11"), resolved on this host."""
    hasher = hashlib.sha256()
    for part in (f"python={python}", *requirements, "--constraints--", *constraints, "--pip--", *pip_args):
        hasher.update(part.encode() + b"\0")
    key = hasher.hexdigest()
    final = root / key
    found = load(final)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        cmd = [sys.executable, "-m", "pip"]
        if python == f"{sys.version_info.major}.{sys.version_info.minor}":
            # same interpreter version as the image: `pip wheel` also builds what has no wheel
            cmd += ["wheel", "--wheel-dir", str(staging)]
        else:
            cmd += ["download", "--dest", str(staging), "--only-binary=:all:", "--python-version", python]
        if constraints:
            (staging / "constraints.txt").write_text("\n".join(constraints) + "\n")
            cmd += ["--constraint", str(staging / "constraints.txt")]
        code, out = _run([*cmd, *pip_args, *requirements], run, cwd=staging, timeout=timeout)
        if code != 0:
            raise pip_failure("resolving the requirements into a wheelhouse", code, out)
        wheels = {p.name: _sha256(p) for p in sorted(staging.glob("*.whl"))}
        (staging / MANIFEST).write_text(json.dumps(wheels, indent=1, sort_keys=True))
        try:
            staging.rename(final)
        except OSError:
            found = load(final)
            if found is None:
                raise
            return found
        return Wheelhouse(final, wheels)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
