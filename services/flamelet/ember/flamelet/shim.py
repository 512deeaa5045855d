"""Tiny parent of every process-runtime actor: records the actor's exit code in a file.

    python -I shim.py <exit-file> <command> [args...]

The flamelet starts the shim in a new session (its own process group); the shim runs the
command in that group, waits for it, and writes its exit code to `<exit-file>` atomically
(temp file + rename), then exits with the same code. So the code survives a flamelet that
was restarted (or killed) while the actor ran: the next flamelet reads the file.

SIGTERM (or SIGINT) sent to the shim is forwarded to the actor, once; the shim outlives it so
that it can record the code. (SIGKILL, after the flamelet's grace, goes to the whole group.)
It imports only the standard library and is run as a script, never as `ember.*`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def record(exit_file: str, code: int) -> None:
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{code}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, exit_file)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: shim.py <exit-file> <command> [args...]", file=sys.stderr)
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
    code = child.wait()
    record(exit_file, code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
