"""Run every benchmark in bench/ (`make bench`), one after the other, each as its own process.

A module `bench/bench_*.py` is a benchmark when it defines `main`; helpers set `RUN_ALL = False`.
Exit status: the number of benchmarks that failed (0: all ran).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    found = []
    for path in sorted(HERE.glob("bench_*.py")):
        text = path.read_text()
        if re.search(r"(?m)^def main\(", text) and not re.search(r"(?m)^RUN_ALL = False", text):
            found.append(path.stem)
    return found


def main() -> int:
    failed = 0
    for name in benchmarks():
        print(f"=== bench.{name}", flush=True)
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent)
        if code != 0:
            print(f"=== bench.{name} exited with {code}", flush=True)
            failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
