"""Ember's base image: Debian + Python (debootstrap, `docker import`), then Ember's actor runtime.

    ember/rootfs:<sha of rootfs.sh>     layer 1: deploy/images/base/rootfs.sh run into a folder, imported
    ember/base:<tag>                    layer 2: /opt/ember, a venv holding ember-common[actor] (flwr,
                                        numpy, pyarrow, mlflow-skinny) and ember-mldata (the
                                        learner's data client), installed offline
                                        from a host-resolved wheelhouse mounted read-only

`tag` hashes the rootfs image, the recipe's requirements and the wheelhouse's content (which holds
the Ember wheels built from the source trees), so the base is built once per machine and
rebuilt only when one of those changes. A deployment with its own base names it in `EMBER_BASE_IMAGE`:
any image whose venv /opt/ember holds ember-common[actor] (one built FROM Ember's base, say).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.builder import wheelhouse
from ember.builder.artifacts import STAGING_PREFIX
from ember.venvs import BuildError, BuildRun
from ember.venvs import run_tool as _run
from ember.venvs import tail as _tail
from ember.builder.containers import find_image, run_and_commit

VENV = "/opt/ember"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_LABEL = "org.ember.python"
IMAGE_CONFIG = [f"ENV PATH={PATH}", f"ENV VIRTUAL_ENV={VENV}", "ENV PYTHONUNBUFFERED=1", 'CMD ["python"]']


@dataclass(frozen=True)
class BaseImage:
    """The image job images start from: its reference, id, Python version and pinned contents."""

    ref: str
    id: str
    python: str
    pins: list[str] = field(default_factory=list)
    """`name==version` of what it holds, as constraints for a job's requirements."""
    slim: str = "true"
    """The shell snippet that trims every install layer (deploy/images/base/slim.sh)."""


def common_source() -> Path:
    """libs/common: the ember-common source tree this builder runs from."""
    spec = importlib.util.find_spec("ember.registry")
    if spec is None or spec.origin is None:
        raise BuildError("cannot locate ember-common's source to build the base image: set EMBER_BASE_IMAGE")
    root = Path(spec.origin).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise BuildError(f"ember-common at {root} is not a source tree (no pyproject.toml): set EMBER_BASE_IMAGE")
    return root


def default_recipe() -> Path:
    return common_source().parents[1] / "deploy" / "images" / "base"


def tree_hash(root: Path, patterns: tuple[str, ...] = ("pyproject.toml", "ember/**/*.py", "ember/**/*.json")) -> str:
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts})
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def rootfs_image(client: Any, recipe: Path, run: BuildRun, log: list[str]) -> Any:
    """Layer 1, cached by the recipe script's hash; needs root and debootstrap to build."""
    script = recipe / "rootfs.sh"
    if not script.is_file():
        raise BuildError(f"base image recipe {script} does not exist: fix EMBER_BUILDER_BASE_RECIPE or set EMBER_BASE_IMAGE")
    ref = f"ember/rootfs:{hashlib.sha256(script.read_bytes()).hexdigest()[:20]}"
    found = find_image(client, ref)
    if found is not None:
        return found
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        raise BuildError("building the base image needs debootstrap (as root: make install, or apt-get install debootstrap); or set EMBER_BASE_IMAGE")
    with tempfile.TemporaryDirectory(prefix="ember-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.append(f"step rootfs: {script} {rootfs}")
        code, out = _run(["bash", str(script), str(rootfs)], run, timeout=1800)
        log.extend(out.splitlines()[-20:])
        if code != 0:
            raise BuildError(f"base image step 'rootfs' failed: {script} exited with {code}", _tail(out))
        pythons = sorted(p.name.removeprefix("python") for p in (rootfs / "usr" / "bin").glob("python3.*") if p.name[7:].replace(".", "").isdigit())
        if not pythons:
            raise BuildError(f"base image step 'rootfs' failed: {script} made no /usr/bin/python3.X")
        tarball = Path(tmp) / "rootfs.tar"
        done = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"base image step 'rootfs' failed: tar exited with {done.returncode}", _tail(done.stderr))
        repository, tag = ref.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=[f"LABEL {PYTHON_LABEL}={pythons[-1]}", *IMAGE_CONFIG])
    return client.images.get(ref)


def ember_wheel(source: Path, root: Path, run: BuildRun) -> Path:
    """The wheel of the Ember distribution at `source`, cached by the source tree's hash."""
    folder = root / f"{source.parent.name}-{source.name}-{tree_hash(source)[:20]}"
    wheels = sorted(folder.glob("ember_*.whl"))
    if wheels:
        return wheels[-1]
    staging = root / f"{STAGING_PREFIX}{folder.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    code, out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(staging), str(source)], run, timeout=300)
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise wheelhouse.pip_failure(f"building the wheel of {source}", code, out)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return next(folder.glob("ember_*.whl"))


def actor_sources() -> list[Path]:
    """The Ember distributions an actor imports: ember-common and ember-mldata (the learner's data client)."""
    common = common_source()
    sources = [common, common.parents[1] / "services" / "mldata"]
    for source in sources:
        if not (source / "pyproject.toml").is_file():
            raise BuildError(f"{source} is not an Ember source tree (no pyproject.toml): set EMBER_BASE_IMAGE")
    return sources


def recipe_requirements(recipe: Path) -> list[str]:
    path = recipe / "requirements.txt"
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()] if path.is_file() else []
    return [line for line in lines if line]


def slim_script(recipe: Path | None) -> str:
    """deploy/images/base/slim.sh: what every install step removes from its layer."""
    if recipe is None:
        try:
            recipe = default_recipe()
        except BuildError:
            return "true\n"
    path = recipe / "slim.sh"
    return path.read_text() if path.is_file() else "true\n"


def pip_install(house: wheelhouse.Wheelhouse, args: list[str], slim: str) -> list[str]:
    """A shell command: pip, run from its wheel in the read-only wheelhouse at /wheels (so images
    carry no pip), installs `args` into the venv with no index; then `slim` trims the layer."""
    quoted = " ".join(shlex.quote(arg) for arg in args)
    pip = f"/wheels/{_pip_wheel(house)}/pip"
    install = f"{VENV}/bin/python {pip} install --no-index --find-links /wheels --no-cache-dir --disable-pip-version-check {quoted}"
    return ["sh", "-c", f"set -e\nexport VENV={VENV}\n{install}\n{slim}"]


def build_base(client: Any, recipe: Path, wheel_root: Path, run: BuildRun, log: list[str], *, pip_args: list[str], timeout: float) -> BaseImage:
    """Ember's base image from `recipe` (built, or found by its tag)."""
    rootfs = rootfs_image(client, recipe, run, log)
    python = rootfs.labels.get(PYTHON_LABEL, "")
    sources = actor_sources()
    wheels = [ember_wheel(source, wheel_root, run) for source in sources]
    ember = [f"/wheels/{wheels[0].name}[actor]", *(f"/wheels/{wheel.name}" for wheel in wheels[1:])]
    extra = recipe_requirements(recipe)
    slim = slim_script(recipe)
    house = wheelhouse.resolve([f"{wheels[0]}[actor]", *map(str, wheels[1:]), "pip", *extra], wheel_root, run, python=python, pip_args=pip_args, timeout=timeout)
    # Ember by its source trees' hashes (a rebuilt wheel differs in its zip timestamps), the rest by content
    others = {name: sha for name, sha in house.wheels.items() if not name.startswith("ember_")}
    parts = [rootfs.id, *extra, slim, *(tree_hash(source) for source in sources), json.dumps(others, sort_keys=True)]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    ref = f"ember/base:{digest[:20]}"
    pins = [pin for pin in house.pins() if not pin.startswith("pip==")]
    found = find_image(client, ref)
    if found is None:
        command = pip_install(house, [*ember, *extra], slim)
        command[2] = f"python3 -m venv --without-pip {VENV}\n{command[2]}"
        found = run_and_commit(
            client, rootfs.id, command, ref, step="base: installing the actor runtime", wheels=house.path,
            changes=[f"LABEL {PYTHON_LABEL}={python}", f"LABEL org.ember.base={ref}", *IMAGE_CONFIG], run=run, log=log, timeout=timeout,
        )
    return BaseImage(ref=ref, id=found.id, python=python, pins=pins, slim=slim)


def _pip_wheel(house: wheelhouse.Wheelhouse) -> str:
    names = [name for name in house.wheels if name.startswith("pip-")]
    if not names:
        raise BuildError("the base wheelhouse has no pip wheel")
    return names[0]


def external_base(client: Any, ref: str, slim: str, log: list[str]) -> BaseImage:
    """`EMBER_BASE_IMAGE`: found locally or pulled; its Python version from its label or by asking it."""
    image = find_image(client, ref)
    if image is None:
        log.append(f"pulling base image {ref}")
        try:
            image = client.images.pull(ref)
        except Exception as exc:
            raise BuildError(f"base image {ref} (EMBER_BASE_IMAGE) is not on this engine and cannot be pulled: {exc}") from None
    python = image.labels.get(PYTHON_LABEL, "")
    if not python:
        out = client.containers.run(image.id, [f"{VENV}/bin/python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], remove=True, network_mode="none")
        python = out.decode().strip()
    return BaseImage(ref=ref, id=image.id, python=python, slim=slim)
