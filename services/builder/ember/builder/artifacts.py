"""Process-runtime artifacts: a venv per content hash of (code + requirements + Ember version).

    <home>/artifacts/<key>/           the venv (bin/python, lib/..., pyvenv.cfg)
                         code/       the job's code folder (or a clone of its git repo)
                         artifact.json  written last; the folder is renamed into place after it

The venv is made from the builder's own interpreter with `--without-pip`; a `.pth` file runs
`site.addsitedir(<parent site-packages>)`, so Ember, Flower, numpy ... (and the parent's pip) are
importable without reinstalling, while anything installed into the venv shadows them. Job
requirements are installed by `<venv python> -m pip install` (the parent's pip, running in the
venv): a requirement the parent already satisfies is reported "already satisfied" and not
installed again, and when the parent satisfies all of them pip is not run at all (measured here:
an empty or already-satisfied build takes ~0.13 s, one small wheel ~1.3 s, `numpy, flwr` through
pip's resolver 2.0 s; `--target`/`--prefix` installs would reinstall what the parent has). Everything is built in a staging folder and renamed atomically, so a crash
never leaves a half-built artifact that looks ready. Synchronous: the builder runs it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.events import Artifact
from ember.jobspec import JobSpec

IGNORED = (".git", "__pycache__", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.pyc")
LOG_TAIL_LINES = 40
READY_FILE = "artifact.json"
STAGING_PREFIX = ".tmp-"


class BuildError(Exception):
    """A build that cannot succeed; `reason` is one line, `log_tail` the tool's last output."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass
class BuildRun:
    """Handle on a running build, so the builder can stop it (job cancelled, shutdown)."""

    cancelled: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    container: Any = field(default=None, repr=False)
    """The Docker container an image step runs in (docker runtime)."""

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.kill()


def ember_version() -> str:
    try:
        return importlib.metadata.version("ember-flops")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parent_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _run(cmd: list[str], run: BuildRun, *, cwd: Path | None = None, timeout: float = 600.0) -> tuple[int, str]:
    """Run `cmd`, output merged; (exit code, output). Killed when `run` is cancelled."""
    if run.cancelled:
        raise BuildError("build cancelled")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    run.process = proc
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise BuildError(f"{Path(cmd[0]).name} {cmd[1:3]} timed out after {timeout:g}s", _tail(output)) from None
    finally:
        run.process = None
    if run.cancelled:
        raise BuildError("build cancelled")
    return proc.returncode, output.decode(errors="replace")


def _tail(output: bytes | str, lines: int = LOG_TAIL_LINES) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fetch_code(spec: JobSpec, spec_dir: str, dest: Path, run: BuildRun) -> None:
    """Put the job's code into `dest`: a copy of `code.path`, a clone of `code.git`, or nothing."""
    if spec.code.git:
        code, out = _run(["git", "clone", "--quiet", spec.code.git, str(dest)], run, timeout=300)
        if code != 0:
            raise BuildError(f"git clone of {spec.code.git} failed (exit {code})", _tail(out))
        code, out = _run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", spec.code.ref], run)
        if code != 0:
            raise BuildError(f"git checkout of {spec.code.ref!r} in {spec.code.git} failed (exit {code})", _tail(out))
        shutil.rmtree(dest / ".git")
        return
    if spec.code.path is None and spec.probe is not None:
        dest.mkdir()
        return
    path = Path(spec.code.path or ".")
    if not path.is_absolute():
        if not spec_dir:
            raise BuildError(f"code.path {str(path)!r} is relative but the job has no spec_dir to resolve it against")
        path = Path(spec_dir) / path
    if not path.is_dir():
        raise BuildError(f"code folder {path} does not exist or is not a folder")
    shutil.copytree(path, dest, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))


def requirement_lines(spec: JobSpec, code_dir: Path) -> list[str]:
    """The job's requirements as pip arguments (a file name is read from the code folder)."""
    reqs = spec.code.requirements
    if isinstance(reqs, list):
        return [r.strip() for r in reqs if r.strip()]
    path = code_dir / reqs
    if not path.is_file():
        raise BuildError(f"requirements file {reqs!r} not found in the code folder")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def artifact_key(code_dir: Path, requirements: list[str]) -> str:
    """sha256 of every file under `code_dir` (path + content), the requirements and Ember's version."""
    digest = hashlib.sha256()
    for part in (f"ember={ember_version()}", f"python={sys.version}", f"prefix={sys.prefix}", *requirements):
        digest.update(part.encode() + b"\0")
    for path in sorted(p for p in code_dir.rglob("*") if not p.is_dir() or p.is_symlink()):
        digest.update(str(path.relative_to(code_dir)).encode() + b"\0")
        digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def artifact_of(folder: Path, key: str, *, cached: bool) -> Artifact:
    return Artifact(kind="venv", key=key, python=str(folder / "bin" / "python"), code_dir=str(folder / "code"), cached=cached)


def satisfied_by_parent(requirements: list[str]) -> bool:
    """True when every requirement is a plain `name[<spec>]` the builder's own environment meets.

    Then pip is not run at all (its resolver takes seconds even when nothing is to be done).
    Anything else (URLs, options, extras, a missing or wrong version) is left to pip.
    """
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return False
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return False
        if req.url or req.extras:
            return False
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(version, prereleases=True):
            return False
    return True


def _make_venv(staging: Path, run: BuildRun) -> None:
    code, out = _run([sys.executable, "-m", "venv", "--without-pip", str(staging)], run, timeout=120)
    if code != 0:
        raise BuildError(f"python -m venv failed (exit {code})", _tail(out))
    site = next((staging / "lib").glob("python*/site-packages"))
    lines = [f"import site; site.addsitedir({path!r})" for path in parent_site_packages()]
    (site / "_ember_parent.pth").write_text("\n".join(lines) + "\n")


def _install(staging: Path, requirements: list[str], pip_args: list[str], run: BuildRun, timeout: float) -> None:
    python = staging / "bin" / "python"
    code, out = _run([str(python), "-m", "pip", "install", *pip_args, *requirements], run, cwd=staging / "code", timeout=timeout)
    if code != 0:
        errors = [line for line in out.splitlines() if line.startswith("ERROR")]
        detail = f": {errors[-1].removeprefix('ERROR: ')}" if errors else ""
        raise BuildError(f"pip install failed (exit {code}){detail}", _tail(out))


def _fix_scripts(staging: Path, final: Path) -> None:
    """Console scripts pip wrote carry the staging path in their shebang; point them at `final`."""
    for script in (staging / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        head = script.read_bytes()[:512]
        if head.startswith(b"#!") and str(staging).encode() in head:
            script.write_bytes(script.read_bytes().replace(str(staging).encode(), str(final).encode()))


def build(spec: JobSpec, spec_dir: str, root: Path, run: BuildRun, *, pip_args: Sequence[str] = (), timeout: float = 600.0) -> Artifact:
    """Build (or reuse) the job's artifact under `root`; raises BuildError with an excerpt."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        fetch_code(spec, spec_dir, staging / "code", run)
        requirements = requirement_lines(spec, staging / "code")
        key = artifact_key(staging / "code", requirements)
        final = root / key
        if (final / READY_FILE).is_file():
            return artifact_of(final, key, cached=True)
        _make_venv(staging, run)
        if requirements and not satisfied_by_parent(requirements):
            _install(staging, requirements, list(pip_args), run, timeout)
        _fix_scripts(staging, final)
        artifact = artifact_of(final, key, cached=False)
        meta = {"key": key, "requirements": requirements, "ember": ember_version(), "artifact": artifact.model_dump()}
        (staging / READY_FILE).write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(final)
        except OSError:
            if (final / READY_FILE).is_file():  # built meanwhile by someone else
                return artifact_of(final, key, cached=True)
            raise
        return artifact
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_staging(root: Path) -> int:
    """Delete staging folders a crashed build left behind; how many."""
    if not root.is_dir():
        return 0
    stale = [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)
