"""The probe actor: runs for a given time and exits with a given code.

It stands in for the aggregator and the learners so the control plane (placement, flamelets,
reports, job state machine) can be exercised before any ML code exists:

    python -m ember.actors.probe --seconds 2 --exit-code 0 [--allocate-mb 300]

It prints one line when it starts and one when it ends (with the actor and job ids Ember put in
its environment), and on SIGTERM it stops at once and exits with 128 + SIGTERM (143), like any
well-behaved process that was asked to stop early. `--allocate-mb` makes it hold that much
memory (touched, so it is resident) while it runs: a container's memory limit can be tried.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

SIGTERM_EXIT = 128 + signal.SIGTERM
MAX_SECONDS = 7 * 24 * 3600.0
"""`ember.jobspec.MAX_SECONDS`."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ember.actors.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="how long to run before exiting (default 1)")
    parser.add_argument("--exit-code", type=int, default=0, help="exit code at the end (default 0)")
    parser.add_argument("--allocate-mb", type=int, default=0, help="memory to hold while running (default 0)")
    args = parser.parse_args(argv)
    # ProbeSpec's bounds (`ember.jobspec`, checked by the manager at submit), checked here with
    # the standard library alone: the probe also runs in images that hold nothing but its source.
    if not (math.isfinite(args.seconds) and 0 <= args.seconds <= MAX_SECONDS):
        parser.error(f"seconds: must be a finite number from 0 to {MAX_SECONDS:g}")
    if not 0 <= args.exit_code <= 255:
        parser.error("exit_code: a process exit status is 0-255")
    if args.allocate_mb < 0:
        parser.error("allocate_mb: must be 0 or more")
    return args


def _say(message: str) -> None:
    ids = " ".join(f"{key}={os.environ[var]}" for key, var in (("job", "EMBER_JOB_ID"), ("actor", "EMBER_ACTOR_ID")) if os.environ.get(var))
    print(f"probe: {message}" + (f" ({ids})" if ids else ""), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run for `--seconds`, then return `--exit-code`; return 143 at once on SIGTERM."""
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    began = time.monotonic()
    held = [bytearray(b"\x01" * (1 << 20)) for _ in range(max(0, args.allocate_mb))]
    _say(f"started: running {args.seconds:g}s, then exiting with code {args.exit_code}")
    if stop.wait(max(0.0, args.seconds)):
        _say(f"stopped by SIGTERM after {time.monotonic() - began:.1f}s")
        return SIGTERM_EXIT
    del held
    _say(f"done after {time.monotonic() - began:.1f}s: exiting with code {args.exit_code}")
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
