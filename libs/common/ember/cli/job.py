"""`ember job ...`: submit, list, show, cancel, logs, watch and report jobs (requests to the manager over MQTT)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ember import topics
from ember.bundle_bus import bundle_spec, publish_bundle
from ember.bus import Message
from ember.cli.common import (
    JOB_CANCELLED,
    JOB_FAILED,
    JSON_OPTION,
    TIMEOUT_OPTION,
    call,
    clock,
    connect,
    console,
    err,
    fail,
    print_json,
    request,
    run,
    settings,
    styled,
    table,
)
from ember.cli.render import detail
from ember.cli.watch import TERMINAL, follow_job
from ember.envelope import inbound
from ember.errors import EmberError, NotFound, RequestTimeout
from ember.events import ActorLogLines
from ember.jobspec import load_spec_file

app = typer.Typer(help="Submit, follow and manage federated jobs.", no_args_is_help=True)

JOB_ARG = typer.Argument(..., help="Job id, as printed by `ember job submit` or `ember job list`.")


def outcome_code(state: str) -> int:
    """Exit code of `--wait`: 0 succeeded, 10 failed, 11 cancelled, 5 still going at the wait timeout."""
    if state not in TERMINAL:
        return RequestTimeout.exit_code
    return {"succeeded": 0, "cancelled": JOB_CANCELLED}.get(state, JOB_FAILED)


@app.command()
def submit(
    file: Path = typer.Argument(..., exists=False, help="Job spec (YAML). Relative code paths start at its folder."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the job until it ends; exit 0 only if it succeeded."),
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
    wait_timeout: float = typer.Option(0, "--wait-timeout", min=0, help="With --wait: give up after this many seconds (0: never)."),
) -> None:
    """Submit the job spec FILE (YAML) to the manager; relative code paths start at FILE's folder.

    The code folder (`code.path`) is packed into a bundle (honouring .gitignore and .emberignore,
    at most EMBER_BUNDLE_MAX_BYTES) and published first; the spec names it by digest. The manager
    validates the spec; an invalid spec prints each bad field and exits with code 2.
    """
    if not file.is_file():
        fail(NotFound(f"no job file at {file}"))
    try:
        spec, bundle = bundle_spec(load_spec_file(file), file.resolve().parent, limit=settings().bundle_max_bytes)
    except EmberError as exc:
        fail(exc)
    data = {"spec": spec}

    async def main() -> dict[str, Any]:
        async with connect() as bus:
            if bundle is not None:
                await publish_bundle(bus, bundle)
                if not as_json:
                    console.print(f"code: {bundle.files} files, {len(bundle.data) / 1024:.1f} KiB packed, {bundle.digest[:19]}…")
            reply = await call(bus, "jobs.submit", data, timeout=timeout)
            if not wait:
                return reply
            if not as_json:
                console.print(f"submitted [bold]{reply['job']}[/]")
            return await follow_job(bus, reply["job"], err if as_json else console, timeout=wait_timeout or None)

    result = run(main)
    if as_json:
        print_json(result)
    elif not wait:
        console.print(f"submitted [bold]{result['job']}[/] ({result.get('state', 'submitted')})")
        console.print(f"follow it with: ember job watch {result['job']}")
    if wait:
        if not as_json and result["state"] not in TERMINAL:
            err.print(f"job {result['job']} is still {result['state']} after {wait_timeout:g}s (--wait-timeout)")
        elif not as_json and result["state"] != "succeeded":
            err.print(f"job {result['job']} {result['state']}: {escape(result.get('reason', ''))}")
        raise typer.Exit(outcome_code(result["state"]))


@app.command("list")
def list_jobs(as_json: bool = JSON_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """List every job the manager knows, newest last."""
    jobs = request("jobs.list", timeout=timeout) or []
    if as_json:
        print_json(jobs)
        return
    t = table("JOB", "NAME", "STATE", "SUBMITTED (UTC)", "ACTORS", "REASON")
    for job in jobs:
        t.add_row(job["job"], job.get("name", ""), styled(job["state"]), clock(job.get("submitted")), str(len(job.get("actors", []))), escape(job.get("reason", "")))
    console.print(t if jobs else "no jobs yet: submit one with `ember job submit FILE`")


@app.command()
def show(job: str = JOB_ARG, as_json: bool = JSON_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """Show job JOB: every state transition with its time and reason, its actors and its rounds."""
    summary = request("jobs.get", {"job": job}, timeout=timeout)
    if as_json:
        print_json(summary)
    else:
        console.print(detail(summary))


@app.command()
def report(
    job: str = JOB_ARG,
    out: Path | None = typer.Option(None, "--out", "-o", help="PNG to write (default: JOB-report.png in the current folder)."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI, read when the job lists no rounds (default: EMBER_MLFLOW_TRACKING_URI, else the store under EMBER_HOME)."
    ),
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Write a PNG of job JOB's per-round metrics; print its final metrics, MLflow run id and model version."""
    from ember.fl.report import write_report

    summary = request("jobs.get", {"job": job}, timeout=timeout)
    uri = tracking_uri or settings().resolved_mlflow_uri()
    try:
        written = write_report(summary, out or Path(f"{job}-report.png"), tracking_uri=uri)
    except Exception as exc:  # an unwritable path, an unreachable MLflow store: say which, no traceback
        fail(f"cannot write the report: {type(exc).__name__}: {exc}")
    if as_json:
        print_json(written)
        return
    console.print(f"wrote [bold]{escape(written['png'])}[/]: {written['rounds']} rounds of job {job} ({styled(summary['state'])})")
    metrics = written.get("metrics") or {}
    if metrics:
        t = table("METRIC", "FINAL")
        for key, value in sorted(metrics.items()):
            t.add_row(key, f"{value:.4g}")
        console.print(t)
    console.print(f"MLflow run: {written['mlflow_run_id'] or '-'}   model version: {written['model_version'] or '-'}")


@app.command()
def cancel(job: str = JOB_ARG, as_json: bool = JSON_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """Cancel job JOB: its actors are stopped on every node. Exits 4 if the job already ended."""
    summary = request("jobs.cancel", {"job": job}, timeout=timeout)
    if as_json:
        print_json(summary)
    else:
        console.print(f"{summary['job']}: {styled(summary['state'])}")


@app.command()
def watch(
    job: str = JOB_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print the final job summary as JSON when it ends."),
) -> None:
    """Live view of job JOB: its state, its actors and (once rounds exist) a progress bar over rounds.

    Ends when the job is terminal; the exit code is that of `submit --wait`.
    """

    async def main() -> dict[str, Any]:
        async with connect() as bus:
            return await follow_job(bus, job, err if as_json else console)

    summary = run(main)
    if as_json:
        print_json(summary)
    raise typer.Exit(outcome_code(summary["state"]))


def actor_lines(actor: dict[str, Any]) -> list[str]:
    """The actor's whole log when its node runs under this Ember home, else the tail it last reported."""
    local = settings().home / "nodes" / actor["node"] / "actors" / f"{actor['actor']}.log"
    with contextlib.suppress(OSError):
        return local.read_text(errors="replace").splitlines()
    return (actor.get("log_tail") or "").splitlines()


@app.command()
def logs(
    job: str = JOB_ARG,
    actor: str | None = typer.Option(None, "--actor", "-a", help="Only this actor (id as in `ember job show`)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Print the output of job JOB's actors; with --follow, new lines live until the job ends."""

    async def main() -> None:
        async with connect() as bus:
            done = asyncio.Event()

            async def on_lines(message: Message) -> None:
                with inbound():
                    lines = ActorLogLines.model_validate(message.body.data)
                if lines.job == job and (actor is None or lines.actor == actor):
                    for line in lines.lines:
                        console.print(f"[cyan]{escape(lines.actor)}[/] │ {escape(line)}")

            async def on_event(message: Message) -> None:
                env = message.envelope
                if env is not None and env.subject == job and env.type in ("JobSucceeded", "JobFailed", "JobCancelled"):
                    done.set()

            if follow:
                bus.subscribe(topics.ACTOR_LOG, on_lines)
                bus.subscribe(topics.EVENT, on_event, aggregate="job")
            summary = await call(bus, "jobs.get", {"job": job}, timeout=timeout)
            actors = [a for a in summary.get("actors", []) if actor is None or a["actor"] == actor]
            if actor is not None and not actors:
                raise NotFound(f"job {job} has no actor {actor!r}")
            for a in actors:
                for line in actor_lines(a):
                    console.print(f"[cyan]{escape(a['actor'])}[/] │ {escape(line)}")
            if not actors:
                console.print(f"job {job} has no actors yet ({summary['state']})")
            if follow and summary["state"] not in TERMINAL:
                while not done.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 2.0)
                    if not done.is_set():
                        with contextlib.suppress(EmberError):
                            state = (await call(bus, "jobs.get", {"job": job}, timeout=timeout))["state"]
                            if state in TERMINAL:
                                done.set()

    run(main)
