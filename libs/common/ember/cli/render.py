"""Rich renderables of a job summary (`JobView.summary()`), shared by `show`, `watch` and `submit --wait`."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ember.cli.common import clock, elapsed, styled, table


def header(job: dict[str, Any]) -> Text:
    reason = f" — {job['reason']}" if job.get("reason") and job["state"] in ("failed", "cancelled") else ""
    return Text.from_markup(f"[bold]{escape(job['job'])}[/] ({escape(job.get('name', ''))}): {styled(job['state'])}{escape(reason)}")


def transitions(job: dict[str, Any]) -> Table:
    t = table("TIME (UTC)", "SINCE SUBMIT", "STATE", "REASON", title="Transitions")
    for tr in job.get("transitions", []):
        t.add_row(clock(tr["time"]), elapsed(job.get("submitted"), tr["time"]), styled(tr["state"]), escape(tr.get("reason", "")))
    return t


def actors(job: dict[str, Any]) -> Table:
    t = table("ACTOR", "ROLE", "NODE", "STATE", "EXIT", "GEN", "REASON", title="Actors")
    for a in job.get("actors", []):
        code = "" if a.get("exit_code") is None else str(a["exit_code"])
        t.add_row(escape(a["actor"]), a["role"], a["node"], styled(a["state"]), code, str(a.get("generation", "")), escape(a.get("reason", "")))
    return t


def _metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(metrics.items()))


def rounds(job: dict[str, Any]) -> Table:
    shown = job.get("rounds", [])
    completed = int(job.get("rounds_completed") or len(shown))
    title = "Rounds" if completed <= len(shown) else f"Rounds (latest {len(shown)} of {completed})"
    t = table("ROUND", "DURATION", "LEARNERS", "METRICS", title=title)
    for r in shown:
        t.add_row(str(r.get("round")), f"{r.get('duration_s', 0):.2f}s", str(len(r.get("learners", []))), escape(_metrics(r.get("metrics", {}))))
    return t


def total_rounds(job: dict[str, Any]) -> int:
    """Rounds the job will run (`training.rounds` of its spec)."""
    try:
        return int(job.get("rounds_planned") or 0)
    except (TypeError, ValueError):
        return 0


def progress(job: dict[str, Any], expected: int | None = None) -> RenderableType | None:
    """A bar over rounds with the latest metrics, once rounds exist."""
    done = job.get("rounds") or []
    if not done:
        return None
    completed = max(int(job.get("rounds_completed") or 0), len(done))
    total = max(expected or total_rounds(job), completed)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text("rounds"),
        ProgressBar(total=total, completed=completed, width=40),
        Text(f"{completed}/{total}"),
        Text(_metrics(done[-1].get("metrics", {}))),
    )
    return grid


def detail(job: dict[str, Any], expected_rounds: int | None = None) -> Group:
    """Everything `ember job show` prints: header, transitions, actors, rounds."""
    parts: list[RenderableType] = [header(job), Text(""), transitions(job)]
    if job.get("actors"):
        parts += [Text(""), actors(job)]
    bar = progress(job, expected_rounds)
    if bar is not None:
        parts += [Text(""), bar, Text(""), rounds(job)]
    result = job.get("result") or {}
    extras = {k: result[k] for k in ("mlflow_run_id", "model_version") if result.get(k)}
    if job.get("recoveries"):
        extras["recoveries"] = len(job["recoveries"])
    if job.get("checkpoint"):
        extras["checkpoint"] = f"round {job['checkpoint']['round']} ({job['checkpoint']['digest'][:12]})"
    if extras:
        parts += [Text("  ".join(f"{k}: {v}" for k, v in extras.items()))]
    return Group(*parts)
