"""Process-runtime artifacts: the job's code as a bundle, plus its requirements, validated here.

    <home>/artifacts/bundles/<hex>/      a code bundle unpacked (ember.bundle), by its digest
                         <hex>.bundle    its bytes, to publish again while a job uses it
    <home>/artifacts/venvs/<key>/        a venv for a set of requirements (ember.venvs)

The builder never reads the submitter's disk: the code arrives as a bundle fetched by digest
(`code.bundle`) or is cloned from `code.git` and packed into a bundle here. The artifact names
the bundle and the requirements, nothing on this disk: a node fetches the bundle itself and
prepares its own environment (ember.flamelet.code). The venv built here proves the
requirements install; a node with the same interpreter builds the same one. Synchronous:
the builder runs it in a thread.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

from ember.bundle import ALWAYS_SKIPPED, STAGING_PREFIX, Bundle, BundleError, cached, pack, unpack_cached
from ember.events import Artifact
from ember.jobspec import JobSpec
from ember.venvs import remove_staging as remove_staging_in
from ember.venvs import (
    BuildError,
    BuildRun,
    ember_version,
    ensure_venv,
    local_requirements,
    ready_venv,
    run_tool,
    satisfied_by_parent,
    tail,
)

__all__ = ["BuildError", "BuildRun", "build", "ember_version", "fetch_code", "remove_staging", "satisfied_by_parent"]
IGNORED = ALWAYS_SKIPPED


def bundle_file(root: Path, digest: str) -> Path:
    return root / "bundles" / f"{digest.removeprefix('sha256:')}.bundle"


def clone(spec: JobSpec, root: Path, run: BuildRun) -> Bundle:
    """Clone `code.git` at `code.ref` and pack it (its .gitignore honoured) into a bundle."""
    assert spec.code.git
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        code, out = run_tool(["git", "clone", "--quiet", spec.code.git, str(dest)], run, timeout=300)
        if code != 0:
            raise BuildError(f"git clone of {spec.code.git} failed (exit {code})", tail(out))
        code, out = run_tool(["git", "-C", str(dest), "checkout", "--quiet", "--detach", spec.code.ref], run)
        if code != 0:
            raise BuildError(f"git checkout of {spec.code.ref!r} in {spec.code.git} failed (exit {code})", tail(out))
        try:
            return pack(dest)
        except BundleError as exc:
            raise BuildError(f"cannot bundle {spec.code.git}: {exc.message}") from None
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def code_folder(spec: JobSpec, root: Path, data: bytes | None, run: BuildRun) -> tuple[Path | None, str, Bundle | None]:
    """(unpacked code folder, its digest, a bundle packed here from git) for the job's code.
    `data`: the bytes of `code.bundle` when it is not in the cache yet."""
    bundles = root / "bundles"
    if spec.code.bundle:
        digest = spec.code.bundle
        folder = cached(digest, bundles)
        if folder is None:
            if data is None:
                raise BuildError(f"code bundle {digest} is neither cached nor fetched")
            try:
                folder = unpack_cached(data, digest, bundles)
            except BundleError as exc:
                raise BuildError(exc.message) from None
            bundle_file(root, digest).write_bytes(data)
        return folder, digest, None
    if spec.code.git:
        packed = clone(spec, root, run)
        folder = unpack_cached(packed.data, packed.digest, bundles)
        bundle_file(root, packed.digest).write_bytes(packed.data)
        return folder, packed.digest, packed
    if spec.code.path:
        raise BuildError(f"code.path {spec.code.path!r} names a folder on the submitter's disk, which the builder does not read: "
                         "submit with `ember job submit` (it sends the code as code.bundle) or name code.git")
    return None, "", None


def requirement_lines(spec: JobSpec, code_dir: Path | None) -> list[str]:
    """The job's requirements as pip arguments (a file name is read from the code folder)."""
    reqs = spec.code.requirements
    if isinstance(reqs, list):
        return [r.strip() for r in reqs if r.strip()]
    path = (code_dir / reqs) if code_dir is not None else None
    if path is None or not path.is_file():
        raise BuildError(f"requirements file {reqs!r} not found in the code folder")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def artifact_key(digest: str, requirements: list[str]) -> str:
    """sha256 of the code's digest and the requirements."""
    hasher = hashlib.sha256()
    for part in (digest, *requirements):
        hasher.update(part.encode() + b"\0")
    return hasher.hexdigest()


def build(spec: JobSpec, root: Path, run: BuildRun, *, data: bytes | None = None, pip_args: list[str] | tuple[str, ...] = (),
          timeout: float = 600.0) -> tuple[Artifact, Bundle | None]:
    """The job's artifact (and the bundle packed here from git, to publish); BuildError with an excerpt."""
    root.mkdir(parents=True, exist_ok=True)
    code_cached = bool(spec.code.bundle and cached(spec.code.bundle, root / "bundles"))
    folder, digest, packed = code_folder(spec, root, data, run)
    requirements = requirement_lines(spec, folder)
    venvs = root / "venvs"
    venv_cached = ready_venv(venvs, requirements, digest if local_requirements(requirements) else "") is not None
    venv = ensure_venv(venvs, requirements, run, pip_args=pip_args, timeout=timeout, cwd=folder, salt=digest)
    artifact = Artifact(kind="bundle", key=artifact_key(digest, requirements), bundle=digest, requirements=requirements,
                        cached=code_cached and (venv is None or venv_cached))
    return artifact, packed


def fetch_code(spec: JobSpec, source: str, dest: Path, run: BuildRun) -> None:
    """Copy the job's code folder `source` (from `code_folder`; "" for a job without code) to `dest`."""
    if run.cancelled:
        raise BuildError("build cancelled")
    if not source:
        if spec.code.bundle or spec.code.git or spec.code.path:
            raise BuildError("internal: the job has code but no code folder was prepared (call code_folder first)")
        dest.mkdir()
        return
    shutil.copytree(source, dest, symlinks=True)


def remove_staging(root: Path) -> int:
    """Delete staging folders a crashed build left behind; how many."""
    return sum(remove_staging_in(folder) for folder in (root, root / "bundles", root / "venvs"))
