"""The `process` runtime: each actor is a local subprocess under a tiny exit-code shim.

Per actor, in `$EMBER_HOME/nodes/<node>/actors/`:
- `<actor>.log`  its stdout and stderr;
- `<actor>.json` pid/pgid and the spec it was started from, so a restarted flamelet re-adopts it;
- `<actor>.exit` its exit code, written by the shim when it ends (even if no flamelet watched).

The actor runs `<artifact.python> -m <module> <args>` with the flamelet's environment, the
spec's env on top and `PYTHONPATH=<artifact.code_dir>`; for a `bundle` artifact, python and
code folder are this node's own, prepared first (`ember.flamelet.code`), in its own session and process group
(so stopping it stops everything it started, and a dying flamelet does not take it along).
An actor is watched through a pidfd (woken by the kernel when it ends, no polling).

`owner.pid` in the same folder names the flamelet that owns the node's actors (each runtime
writes it when it starts); the shim stops an actor once no owner has been alive for
`orphan_grace` seconds (see `ember.flamelet.shim`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from ember.events import ActorSpec
from ember.flamelet.code import CodeCache
from ember.flamelet.runtime import ActorExit, PullProgress, StartFailed
from ember.log import get_logger

SHIM = Path(__file__).with_name("shim.py")
OWNER_FILE = "owner.pid"
log = get_logger("ember.flamelet.process")


def describe_code(code: int | None) -> str:
    if code is None:
        return "ended without recording an exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


def _alive(pid: int, marker: str) -> bool:
    """Is `pid` still the shim we started (its command line names our exit file)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline and not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


async def _until_gone(pid: int, marker: str) -> None:
    """Return when process `pid` has ended: a pidfd wakes us; without pidfd, check every 0.2 s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):
        while _alive(pid, marker):  # noqa: ASYNC110 (no pidfd on this kernel: nothing to wait on but the process table)
            await asyncio.sleep(0.2)
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class ProcessActor:
    """One actor process (started here, or adopted from an earlier flamelet)."""

    def __init__(self, spec: ActorSpec, files: ActorFiles, pid: int | None, popen: subprocess.Popen[bytes] | None = None,
                 exit: ActorExit | None = None) -> None:
        self.spec = spec
        self.files = files
        self.log_path = files.log
        self._pid = pid
        self._popen = popen
        self._exit = exit
        self._killed_after: float | None = None
        self._watch: asyncio.Task[ActorExit] | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def finished(self) -> ActorExit | None:
        return self._exit

    @property
    def adopted(self) -> bool:
        return self._popen is None

    async def wait(self) -> ActorExit:
        if self._exit is not None:
            return self._exit
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._wait_exit())
        return await asyncio.shield(self._watch)

    async def _wait_exit(self) -> ActorExit:
        assert self._pid is not None
        await _until_gone(self._pid, str(self.files.exit))
        code = self.files.read_exit()
        if self._popen is not None:
            returncode = self._popen.wait()  # reaps the shim; immediate, it has ended
            if code is None:
                code = returncode if returncode < 0 else code
        reason = describe_code(code)
        if self._killed_after is not None:
            reason = f"stopped: SIGTERM, then SIGKILL after {self._killed_after:g}s; {reason}"
        self._exit = ActorExit(code, reason)
        return self._exit

    async def stop(self, grace: float) -> None:
        if self._exit is not None or self._pid is None:
            return
        if not self._signal(signal.SIGTERM, group=False):  # the shim forwards it to the actor
            return
        try:
            await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            self._killed_after = grace
            self._signal(signal.SIGKILL)
            await self.wait()

    def _signal(self, sig: signal.Signals, *, group: bool = True) -> bool:
        assert self._pid is not None
        if self.adopted and not _alive(self._pid, str(self.files.exit)):
            return False  # never signal a recycled pid
        try:
            if group:
                os.killpg(self._pid, sig)  # the shim leads its own process group
            else:
                os.kill(self._pid, sig)
            return True
        except ProcessLookupError:
            return False


class ActorFiles:
    """The files of one actor in the node's actors folder."""

    def __init__(self, folder: Path, actor: str) -> None:
        self.log = folder / f"{actor}.log"
        self.state = folder / f"{actor}.json"
        self.exit = folder / f"{actor}.exit"

    def read_exit(self) -> int | None:
        try:
            return int(self.exit.read_text().strip())
        except (OSError, ValueError):
            return None

    def remove(self, *, log_too: bool = False) -> None:
        for path in (self.state, self.exit, *((self.log,) if log_too else ())):
            path.unlink(missing_ok=True)


class ProcessRuntime:
    """Actors as local subprocesses; see the module docstring."""

    name = "process"

    def __init__(self, actors_dir: Path, *, base_env: Mapping[str, str] | None = None, code: CodeCache | None = None,
                 orphan_grace: float = 30.0) -> None:
        self.actors_dir = actors_dir
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.code = code or CodeCache.from_env(actors_dir.parent / "code", self.base_env)
        self.orphan_grace = orphan_grace
        actors_dir.mkdir(parents=True, exist_ok=True)
        self.owner_file = actors_dir / OWNER_FILE
        tmp = self.owner_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.owner_file)

    def files(self, actor: str) -> ActorFiles:
        if not actor or "/" in actor or actor.startswith(".") or "\x00" in actor:
            raise StartFailed(f"invalid actor id {actor!r}")
        return ActorFiles(self.actors_dir, actor)

    def command(self, spec: ActorSpec) -> list[str]:
        python = spec.artifact.python or sys.executable
        if not (os.path.isabs(python) and os.access(python, os.X_OK)) and not shutil.which(python):
            raise StartFailed(f"the artifact's python {python!r} does not exist or is not executable")
        return [python, "-m", spec.module, *spec.args]

    def environment(self, spec: ActorSpec) -> dict[str, str]:
        env = {**self.base_env, **spec.env}
        if spec.artifact.code_dir:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (spec.artifact.code_dir, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def prepare(self, spec: ActorSpec, progress: PullProgress) -> None:
        """Nothing to fetch: the artifact is a venv and a code folder on this disk."""

    async def start(self, spec: ActorSpec) -> ProcessActor:
        if spec.artifact.kind == "image":
            raise StartFailed(f"the {self.name!r} runtime cannot run an image artifact ({spec.artifact.image})")
        files = self.files(spec.actor)
        if spec.artifact.bundle:
            python, code_dir = await self.code.prepare(spec)
            spec = spec.model_copy(update={"artifact": spec.artifact.model_copy(update={"python": python, "code_dir": code_dir})})
        command = self.command(spec)
        code_dir = spec.artifact.code_dir
        if code_dir and not Path(code_dir).is_dir():  # noqa: ASYNC240 (one stat)
            raise StartFailed(f"the artifact's code folder {code_dir} does not exist")
        files.remove()
        with open(files.log, "ab") as out:  # noqa: ASYNC230 (the log file is opened once, to hand to the child)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"--- ember: {stamp} starting {spec.actor}: {' '.join(command)}\n".encode())
            out.flush()
            try:
                popen = subprocess.Popen(  # noqa: ASYNC220 (Popen of the shim returns at once; the actor runs detached)
                    [sys.executable, "-I", str(SHIM), *self._watch_owner(), str(files.exit), *command],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=self.environment(spec), cwd=code_dir or self.actors_dir, start_new_session=True,
                )
            except OSError as exc:
                raise StartFailed(f"cannot start the actor: {exc}") from None
        record = {"actor": spec.actor, "pid": popen.pid, "pgid": popen.pid, "started": stamp, "spec": spec.model_dump(mode="json")}
        tmp = files.state.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, files.state)
        return ProcessActor(spec, files, popen.pid, popen)

    def _watch_owner(self) -> list[str]:
        return ["--owner", str(self.owner_file), "--orphan-grace", f"{self.orphan_grace:g}"] if self.orphan_grace > 0 else []

    async def adopt(self) -> list[ProcessActor]:
        found = []
        for path in sorted(self.actors_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                spec = ActorSpec.model_validate(record["spec"])
                pid = int(record["pid"])
                files = self.files(spec.actor)
            except (OSError, ValueError, KeyError, TypeError, ValidationError, StartFailed) as exc:
                log.warning("flamelet.adopt_skipped", file=path.name, reason=str(exc)[:300])
                continue
            code = files.read_exit()
            if code is not None:
                found.append(ProcessActor(spec, files, pid, exit=ActorExit(code, describe_code(code))))
            elif _alive(pid, str(files.exit)):
                found.append(ProcessActor(spec, files, pid))
            else:
                found.append(ProcessActor(spec, files, pid, exit=ActorExit(None, "lost: its process is gone and left no exit code")))
        return found

    async def forget(self, actor: str) -> None:
        self.files(actor).remove()
