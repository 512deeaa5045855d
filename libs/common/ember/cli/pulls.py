"""Image pulls of one job's actors as `ember job watch` shows them, from the flamelets' reports.

A flamelet reports `pulling` with bytes done/total (retained, on the actor's state topic) while
it fetches an actor's image; the manager records the state once, the bytes live only in those
reports. The live view draws a bar per pulling actor; plain output prints a line per actor
each time its pull passes another quarter.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


class Pulls:
    def __init__(self, job: str) -> None:
        self.job = job
        self.current: dict[str, tuple[int, int, str]] = {}
        """actor -> (bytes done, bytes total, what is pulled) while it is `pulling`."""
        self._quarter: dict[str, int] = {}

    def update(self, report: dict[str, Any]) -> None:
        """Take one `ActorReport` payload (of any job; others are ignored)."""
        if report.get("job") != self.job or not isinstance(report.get("actor"), str):
            return
        actor = report["actor"]
        if report.get("state") == "pulling":
            done, total = int(report.get("bytes_done") or 0), int(report.get("bytes_total") or 0)
            self.current[actor] = (done, total, str(report.get("reason") or "pulling"))
        else:
            self.current.pop(actor, None)

    def renderable(self) -> Table | None:
        if not self.current:
            return None
        grid = Table.grid(padding=(0, 1))
        for actor, (done, total, what) in sorted(self.current.items()):
            grid.add_row(Text(actor), ProgressBar(total=max(total, 1), completed=done, width=30),
                         Text(f"{megabytes(done)}/{megabytes(total)}"), Text(escape(what)))
        return grid

    def lines(self) -> list[str]:
        """Plain output: a line for each actor whose pull passed another quarter since the last call."""
        out = []
        for actor, (done, total, what) in sorted(self.current.items()):
            quarter = 4 * done // total if total else 0
            if self._quarter.get(actor) != quarter:
                self._quarter[actor] = quarter
                out.append(f"{actor}: {what}  {megabytes(done)}/{megabytes(total)}")
        return out
