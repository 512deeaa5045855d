"""Docker-runtime artifacts: one image per content hash, pushed to the registry, named by digest.

    <registry>/ember/actor:<key>      key: sha256 of (code, requirements, Ember version, base image id)
      layer(s) base                   ember/base:<tag> (base_image.py) or EMBER_BASE_IMAGE
      layer    requirements           ember/deps:<hash>, the job's wheelhouse installed offline
      layer    code                   the code folder at /opt/ember/job

The aggregator and the learners run the same image (the role is the command). What changes least
comes first, so a code-only change adds one small layer over the cached requirements image. Before
building, the registry is asked for `<key>`: when it has it, that digest is the artifact and nothing
is built. `BuildSucceeded` carries `<registry>/ember/actor@sha256:...`, so nodes run exactly what was
built. Synchronous (the builder runs it in a thread); docs/images.md describes the layout.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from ember.builder import wheelhouse
from ember.builder.artifacts import IGNORED, BuildError, BuildRun, ember_version, fetch_code, requirement_lines
from ember.builder.base_image import VENV, BaseImage, build_base, default_recipe, external_base, pip_install, slim_script
from ember.builder.containers import commit_files, docker_client, find_image, push, registry_digest, run_and_commit, unreachable
from ember.events import Artifact
from ember.jobspec import JobSpec
from ember.registry import answers

REPOSITORY = "ember/actor"
CODE_DIR = f"{VENV}/job"


@dataclass(frozen=True)
class ImageSettings:
    """What an image build needs from the builder's settings."""

    registry: str
    wheelhouse: Path
    base_image: str = ""
    base_recipe: Path | None = None
    pip_args: tuple[str, ...] = ()
    timeout: float = 900.0


def image_key(code_dir: Path, requirements: list[str], base: BaseImage) -> str:
    digest = hashlib.sha256()
    for part in (f"ember={ember_version()}", f"base={base.id}", *requirements):
        digest.update(part.encode() + b"\0")
    for path in sorted(p for p in code_dir.rglob("*") if not p.is_dir() or p.is_symlink()):
        digest.update(str(path.relative_to(code_dir)).encode() + b"\0")
        digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def code_archive(code_dir: Path) -> bytes:
    """The code folder as a tar with a `job/` prefix, owned by root, times zeroed."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(Path(info.name).match(pattern) for pattern in IGNORED):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(code_dir, arcname="job", filter=normalise)
    return buffer.getvalue()


def requirements_image(client: object, base: BaseImage, requirements: list[str], settings: ImageSettings, run: BuildRun, log: list[str]) -> str:
    """The base plus the job's requirements (the base itself when there are none); its image id."""
    if not requirements:
        return base.id
    house = wheelhouse.resolve(
        [*requirements, "pip"], settings.wheelhouse, run, python=base.python, constraints=base.pins,
        pip_args=list(settings.pip_args), timeout=settings.timeout,
    )
    tag = hashlib.sha256("\0".join([base.id, *requirements, base.slim, house.digest]).encode()).hexdigest()[:20]
    ref = f"ember/deps:{tag}"
    found = find_image(client, ref)
    if found is None:
        found = run_and_commit(client, base.id, pip_install(house, requirements, base.slim), ref, step="installing requirements", wheels=house.path,
                               changes=[], run=run, log=log, timeout=settings.timeout)
    return str(found.id)


def build_image(spec: JobSpec, spec_dir: str, settings: ImageSettings, run: BuildRun) -> Artifact:
    """Find or build the job's image in `settings.registry`; raises BuildError with the log's tail."""
    log: list[str] = []
    registry = settings.registry
    if not registry:
        raise BuildError("no image registry configured for the docker runtime: set EMBER_REGISTRY (host:port) or run `ember up --runtime docker`")
    if not answers(registry, timeout=3.0):
        raise BuildError(unreachable(registry, ConnectionError("no answer on /v2/")))
    client = docker_client(settings.timeout)
    try:
        with tempfile.TemporaryDirectory(prefix="ember-image-") as tmp:
            code_dir = Path(tmp) / "code"
            fetch_code(spec, spec_dir, code_dir, run)
            requirements = requirement_lines(spec, code_dir)
            if settings.base_image:
                base = external_base(client, settings.base_image, slim_script(settings.base_recipe), log)
            else:
                base = build_base(client, settings.base_recipe or default_recipe(), settings.wheelhouse, run, log, pip_args=list(settings.pip_args), timeout=settings.timeout)
            key = image_key(code_dir, requirements, base)
            repository = f"{registry}/{REPOSITORY}"
            digest = registry_digest(registry, REPOSITORY, key)
            if digest:
                return artifact_of(repository, key, digest, cached=True)
            deps = requirements_image(client, base, requirements, settings, run, log)
            changes = [f"WORKDIR {CODE_DIR}", f"ENV PYTHONPATH={CODE_DIR}", f"LABEL org.ember.key={key}", f"LABEL org.ember.base={base.ref}"]
            log.append("step code: copying the code folder")
            commit_files(client, deps, code_archive(code_dir), VENV, f"{repository}:{key}", changes=changes)
            log.append(f"step push: {repository}:{key}")
            digest = push(client, repository, key, log)
            return artifact_of(repository, key, digest, cached=False)
    except BuildError as exc:
        if not exc.log_tail and log:
            exc.log_tail = "\n".join(log[-40:])
        raise
    except docker.errors.DockerException as exc:  # the engine refused a step: say which one
        step = next((line for line in reversed(log) if line.startswith("step ")), "step (before the first)")
        raise BuildError(f"the Docker engine failed the build at {step.split(':')[0]}: {exc}", "\n".join(log[-40:])) from None
    finally:
        client.close()


def artifact_of(repository: str, key: str, digest: str, *, cached: bool) -> Artifact:
    return Artifact(kind="image", key=key, image=f"{repository}@{digest}", python=f"{VENV}/bin/python", code_dir=CODE_DIR, cached=cached)
