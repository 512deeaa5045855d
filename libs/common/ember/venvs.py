"""Python environments for job requirements, cached by content hash; used by the builder (to
validate a job's requirements) and by process-runtime flamelets (to run its actors).

    <root>/<key>/        a venv (bin/python, lib/..., pyvenv.cfg); key = sha256 of the
                         requirements, this interpreter and Ember's version
             venv.json   written last; the folder is renamed into place after it

The venv is made from this process's interpreter with `--without-pip`; a `.pth` file runs
`site.addsitedir(<parent site-packages>)`, so Ember, Flower, numpy ... (and the parent's pip) are
importable without reinstalling, while anything installed into the venv shadows them.
Requirements are installed by `<venv python> -m pip install` (the parent's pip, running in the
venv). When the parent already satisfies every requirement no venv is needed at all
(`ensure_venv` returns None: run the parent's interpreter), since starting pip's resolver
costs more than the rest of a build (docs/benchmarks.md, "Figures behind the code").
Everything is built in a staging folder and renamed atomically, so a crash never leaves a
half-built venv that looks ready. Synchronous: callers run it in a thread.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 40
READY_FILE = "venv.json"
STAGING_PREFIX = ".tmp-"


class BuildError(Exception):
    """A build that cannot succeed; `reason` is one line, `log_tail` the tool's last output."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass
class BuildRun:
    """Handle on a running build, so its owner can stop it (job cancelled, shutdown)."""

    cancelled: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    container: Any = field(default=None, repr=False)
    """The Docker container an image build step runs in (docker runtime)."""

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.kill()


def ember_version() -> str:
    try:
        return importlib.metadata.version("ember-common")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parent_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def run_tool(cmd: list[str], run: BuildRun, *, cwd: Path | None = None, timeout: float = 600.0) -> tuple[int, str]:
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
        raise BuildError(f"{Path(cmd[0]).name} {cmd[1:3]} timed out after {timeout:g}s", tail(output)) from None
    finally:
        run.process = None
    if run.cancelled:
        raise BuildError("build cancelled")
    return proc.returncode, output.decode(errors="replace")


def tail(output: bytes | str, lines: int = LOG_TAIL_LINES) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return "\n".join(text.rstrip().splitlines()[-lines:])


def satisfied_by_parent(requirements: list[str]) -> bool:
    """True when every requirement is a plain `name[<spec>]` this environment meets.

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


def local_requirements(requirements: list[str]) -> bool:
    """Does any requirement name a path (then the venv depends on the code folder too)?"""
    return any(line.startswith((".", "/", "file:")) or " @ file:" in line for line in requirements)


def venv_key(requirements: list[str], salt: str = "") -> str:
    """sha256 of the requirements, `salt` (the code's digest when a requirement is a local
    path), this interpreter (version and prefix) and Ember's version."""
    digest = hashlib.sha256()
    for part in (f"ember={ember_version()}", f"python={sys.version}", f"prefix={sys.prefix}", f"salt={salt}", *requirements):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _make_venv(staging: Path, run: BuildRun) -> None:
    code, out = run_tool([sys.executable, "-m", "venv", "--without-pip", str(staging)], run, timeout=120)
    if code != 0:
        raise BuildError(f"python -m venv failed (exit {code})", tail(out))
    site = next((staging / "lib").glob("python*/site-packages"))
    lines = [f"import site; site.addsitedir({path!r})" for path in parent_site_packages()]
    (site / "_ember_parent.pth").write_text("\n".join(lines) + "\n")


def _install(staging: Path, requirements: list[str], pip_args: list[str], run: BuildRun, timeout: float, cwd: Path | None) -> None:
    python = staging / "bin" / "python"
    code, out = run_tool([str(python), "-m", "pip", "install", *pip_args, *requirements], run, cwd=cwd or staging, timeout=timeout)
    if code != 0:
        errors = [line for line in out.splitlines() if line.startswith("ERROR")]
        detail = f": {errors[-1].removeprefix('ERROR: ')}" if errors else ""
        raise BuildError(f"pip install failed (exit {code}){detail}", tail(out))


def _fix_scripts(staging: Path, final: Path) -> None:
    """Console scripts pip wrote carry the staging path in their shebang; point them at `final`."""
    for script in (staging / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        head = script.read_bytes()[:512]
        if head.startswith(b"#!") and str(staging).encode() in head:
            script.write_bytes(script.read_bytes().replace(str(staging).encode(), str(final).encode()))


def ready_venv(root: Path, requirements: list[str], salt: str = "") -> Path | None:
    final = root / venv_key(requirements, salt)
    return final if (final / READY_FILE).is_file() else None


def ensure_venv(root: Path, requirements: list[str], run: BuildRun, *, pip_args: list[str] | tuple[str, ...] = (),
                timeout: float = 600.0, cwd: Path | None = None, salt: str = "") -> Path | None:
    """The venv for `requirements` under `root` (built once); None when this interpreter already
    satisfies them. `cwd` is where pip runs (relative paths in requirements start there; pass
    the code's digest as `salt`, so such a venv is keyed by the code too). Raises BuildError with pip's last output."""
    if not requirements or satisfied_by_parent(requirements):
        return None
    salt = salt if local_requirements(requirements) else ""
    found = ready_venv(root, requirements, salt)
    if found is not None:
        return found
    key = venv_key(requirements, salt)
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        _make_venv(staging, run)
        _install(staging, requirements, list(pip_args), run, timeout, cwd)
        _fix_scripts(staging, final)
        meta = {"key": key, "requirements": requirements, "ember": ember_version(), "python": sys.version}
        (staging / READY_FILE).write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(final)
        except OSError:
            if not (final / READY_FILE).is_file():  # else: built meanwhile by someone else
                raise
        return final
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
