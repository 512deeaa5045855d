"""Tiny parent of every process-runtime actor: records the actor's exit code in a file.

    python -I shim.py [--owner <pid-file> --orphan-grace <seconds>] <exit-file> <command> [args...]

The flamelet starts the shim in a new session (its own process group); the shim runs the
command in that group, waits for it, and writes its exit code to `<exit-file>` atomically
(temp file + rename), then exits with the same code. So the code survives a flamelet that
was restarted (or killed) while the actor ran: the next flamelet reads the file.

SIGTERM (or SIGINT) sent to the shim is forwarded to the actor, once; the shim outlives it so
that it can record the code. (SIGKILL, after the flamelet's grace, goes to the whole group.)
With `--owner`, the shim watches the flamelet that owns the node's actors (the pid in
`<pid-file>`, rewritten by every flamelet that starts on the node): once no flamelet has been
alive for `--orphan-grace` seconds, it stops the actor as it would on SIGTERM. An actor whose
flamelet died does not run on unattended; a flamelet restarted within the grace re-adopts it.

It imports only the standard library and is run as a script, never as `ember.*`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHECK_S = 1.0
"""How often the owner is checked."""
STOP_GRACE_S = 10.0
"""After stopping an orphaned actor with SIGTERM, how long before SIGKILL."""


def record(exit_file: str, code: int) -> None:
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{code}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, exit_file)


def owner_alive(pid_file: str) -> bool:
    """Is the process named in `pid_file` running (not a zombie)? False if the file is unreadable."""
    try:
        with open(pid_file) as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/stat") as fh:
            return not fh.read().rsplit(") ", 1)[-1].startswith("Z")
    except (OSError, ValueError):
        return False


def wait_watching(child: subprocess.Popen[bytes], owner: str | None, grace: float) -> int:
    """Wait for the actor; without a live owner for `grace` seconds, stop it (SIGTERM, then SIGKILL)."""
    if owner is None or grace <= 0:
        return child.wait()
    orphaned_at: float | None = None
    while True:
        try:
            return child.wait(timeout=CHECK_S)
        except subprocess.TimeoutExpired:
            pass
        if owner_alive(owner):
            orphaned_at = None
            continue
        now = time.monotonic()
        orphaned_at = orphaned_at or now
        if now - orphaned_at >= grace:
            print(f"ember: no flamelet owns this actor for {grace:g}s: stopping it", file=sys.stderr, flush=True)
            child.terminate()
            try:
                return child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                return child.wait()


def main(argv: list[str]) -> int:
    owner: str | None = None
    grace = 0.0
    if argv[:1] == ["--owner"] and len(argv) >= 4 and argv[2] == "--orphan-grace":
        owner, grace, argv = argv[1], float(argv[3]), argv[4:]
    if len(argv) < 2:
        print("usage: shim.py [--owner <pid-file> --orphan-grace <seconds>] <exit-file> <command> [args...]", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[1:]
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)  # arrived while the actor was being started
        elif child.poll() is None:
            child.send_signal(signum)

    # Python-level handlers (not SIG_IGN, which the child would inherit): the shim forwards the
    # signal, waits for the actor and records how it ended.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"ember: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        record(exit_file, 127)
        return 127
    for signum in pending[:1]:
        child.send_signal(signum)
    code = wait_watching(child, owner, grace)
    record(exit_file, code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
