"""Server-rendered HTML: whole pages, and the fragments the event streams replace in them.

Every fragment is keyed by the id of the element it fills (`parts`): the page's script swaps
`innerHTML` by id, so the first render and every update come from the same functions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

JOB_STATES = ("submitted", "building", "ready", "placing", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
LATEST_ROUNDS = 10


def e(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, *, stream: str, active: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if name == active else ""}>{name}</a>' for name, href in (("overview", "/"), ("nodes", "/nodes"), ("jobs", "/jobs"))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · Ember</title><link rel="stylesheet" href="/static/ember.css"></head>
<body data-stream="{e(stream)}"><header><b>Ember</b><nav>{nav}</nav><span id="conn" class="conn">connecting…</span></header>
<main>{body}</main><script src="/static/ember.js"></script></body></html>"""


def badge(state: str) -> str:
    return f'<span class="badge s-{e(state)}">{e(state)}</span>'


def age(since: str | None, now: datetime | None = None) -> str:
    if not since:
        return ""
    try:
        then = datetime.fromisoformat(since)
    except ValueError:
        return ""
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def age_span(since: str | None) -> str:
    """An age the page's script keeps current between updates (from `data-since`)."""
    return f'<span class="age" data-since="{e(since or "")}">{e(age(since))}</span>'


def error_note(value: Any) -> str:
    if isinstance(value, dict) and "error" in value:
        return f'<p class="error">{e(value["error"])}</p>'
    return ""


# --- nodes ---------------------------------------------------------------------------------------


def nodes_table(nodes: Any) -> str:
    if note := error_note(nodes):
        return note
    if not nodes:
        return "<p>No node has announced itself yet.</p>"
    rows = []
    for node in nodes:
        info = node.get("info") or {}
        shown = {"cpus": info.get("cpus"), "memory_mb": info.get("memory_mb"), **(info.get("labels") or {})}
        labels = " ".join(f'<span class="tag">{e(k)}={e(v)}</span>' for k, v in shown.items() if v is not None)
        runtimes = ", ".join(e(r) for r in info.get("runtimes") or [])
        data = info.get("data") or {}
        tags = " ".join(f'<span class="tag">{e(tag)}: {int(rows):,} rows</span>' for tag, rows in sorted(data.items()) if isinstance(rows, int))
        actors = "<br>".join(f'<a href="/jobs/{quote(a["job"])}">{e(a["actor"])}</a> {badge(a["state"])}' for a in node.get("actors") or [])
        rows.append(
            f'<tr data-node="{e(node["node"])}"><td>{e(node["node"])}</td><td class="status">{badge(node["status"])}</td>'
            f"<td>{age_span(node.get('since'))}</td><td>{labels}</td><td>{runtimes}</td><td>{tags}</td><td>{actors}</td></tr>"
        )
    online = sum(1 for n in nodes if n["status"] == "online")
    return (
        f'<p class="count" id="nodes-online">{online} of {len(nodes)} online</p>'
        "<table><thead><tr><th>node</th><th>status</th><th>since</th><th>labels</th><th>runtimes</th><th>data</th><th>actors</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- jobs ----------------------------------------------------------------------------------------


def progress(job: dict[str, Any]) -> str:
    done, planned = job.get("rounds_completed", 0), job.get("rounds_planned", 0) or 0
    pct = min(100, int(100 * done / planned)) if planned else 0
    return f'<span class="bar"><span style="width:{pct}%"></span></span> {done}/{planned}'


def jobs_table(jobs: Any, state: str = "") -> str:
    if note := error_note(jobs):
        return note
    shown = [j for j in reversed(jobs or []) if not state or j["state"] == state]
    if not shown:
        return f"<p>No {e(state) + ' ' if state else ''}jobs.</p>"
    rows = "".join(
        f'<tr data-job="{e(j["job"])}"><td><a href="/jobs/{quote(j["job"])}">{e(j["job"])}</a></td><td>{e(j["name"])}</td>'
        f'<td class="state">{badge(j["state"])}</td><td>{progress(j)}</td><td>{age_span(j.get("submitted"))}</td><td>{e(j.get("reason", ""))}</td></tr>'
        for j in shown
    )
    return f"<table><thead><tr><th>job</th><th>name</th><th>state</th><th>rounds</th><th>age</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"


def state_filter(state: str) -> str:
    options = "".join(f'<option value="{s}"{" selected" if s == state else ""}>{s}</option>' for s in JOB_STATES)
    return f'<form class="filter" method="get" action="/jobs"><label>state <select name="state" onchange="this.form.submit()"><option value="">all</option>{options}</select></label></form>'


# --- one job -------------------------------------------------------------------------------------


def job_parts(job: Any, logs: dict[str, list[str]], *, can_cancel: bool, mlflow_ui: str) -> dict[str, str]:
    """The fragments of the job page, by element id."""
    if note := error_note(job):
        return {"job-head": note}
    result = job.get("result") or {}
    links = []
    if mlflow_ui and result.get("mlflow_run_id"):
        links.append(f'<a href="{e(mlflow_ui.rstrip("/"))}/#/runs/{quote(result["mlflow_run_id"])}">MLflow run {e(result["mlflow_run_id"][:12])}</a>')
    if mlflow_ui and result.get("model_version"):
        links.append(f'<a href="{e(mlflow_ui.rstrip("/"))}/#/models">model version {e(result["model_version"])}</a>')
    elif result.get("model_version"):
        links.append(f"model version {e(result['model_version'])}")
    cancel = ""
    if can_cancel and job["state"] not in TERMINAL:
        cancel = f'<button id="cancel" data-job="{e(job["job"])}">cancel job</button>'
    final = " ".join(f'<span class="tag">{e(k)}={v:.4g}</span>' for k, v in sorted((result.get("metrics") or {}).items()) if isinstance(v, (int, float)))
    head = (
        f'<h1>{e(job["name"])} <small>{e(job["job"])}</small></h1>'
        f'<p><span id="job-state" data-state="{e(job["state"])}">{badge(job["state"])}</span> {progress(job)} · '
        f'<span id="rounds-done">{job.get("rounds_completed", 0)}</span> rounds · age {age_span(job.get("submitted"))} {e(job.get("reason", ""))}</p>'
        f"<p>{' · '.join(links)} {final}</p>{cancel}"
    )
    timeline = "".join(
        f"<li><time>{e(t['time'][11:19])}</time> {badge(t['state'])} {e(t.get('reason', ''))}</li>" for t in job.get("transitions", [])
    )
    by_node: dict[str, list[dict[str, Any]]] = {}
    for actor in job.get("actors", []):
        by_node.setdefault(actor["node"], []).append(actor)
    placement = "".join(
        f"<div class=node><h3>{e(node)}</h3>"
        + "".join(
            f'<div class="actor">{e(a["role"])} <a href="#log" class="show-log" data-actor="{e(a["actor"])}">{e(a["actor"])}</a> {badge(a["state"])}'
            f'{" gen " + str(a["generation"]) if a.get("generation", 1) > 1 else ""} {e(a.get("reason", ""))}</div>'
            for a in actors
        )
        + "</div>"
        for node, actors in sorted(by_node.items())
    )
    rounds = job.get("rounds", [])[-LATEST_ROUNDS:]
    keys = sorted({k for r in rounds for k in r.get("metrics", {})})
    header = "".join(f"<th>{e(k)}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{r['round']}</td>" + "".join(f"<td>{r['metrics'][k]:.4g}</td>" if k in r.get("metrics", {}) else "<td></td>" for k in keys)
        + f"<td>{r.get('duration_s', 0):.3f}</td><td>{len(r.get('learners', []))}</td><td>{len(r.get('failed', []))}</td></tr>"
        for r in reversed(rounds)
    )
    table = f"<table><thead><tr><th>round</th>{header}<th>duration s</th><th>learners</th><th>failed</th></tr></thead><tbody>{body}</tbody></table>" if rounds else "<p>No round yet.</p>"
    log_blocks = "".join(
        f'<pre class="log" data-actor="{e(actor)}" hidden>{e(chr(10).join(lines)) or "(no output yet)"}</pre>' for actor, lines in sorted(logs.items())
    )
    return {"job-head": head, "timeline": f"<ol>{timeline}</ol>", "placement": placement or "<p>Not placed yet.</p>", "rounds": table, "logs": log_blocks}


def job_page(job_id: str, parts: dict[str, str], rounds: list[dict[str, Any]]) -> str:
    def part(key: str) -> str:
        return f'<div id="{key}" class="part">{parts.get(key, "")}</div>'

    import json

    data = escape(json.dumps(rounds), quote=False)
    body = f"""{part("job-head")}
<section class="grid"><div><h2>Timeline</h2>{part("timeline")}</div><div><h2>Placement</h2>{part("placement")}</div></section>
<section><h2>Metrics per round</h2><div id="chart" class="chart"></div><script type="application/json" id="rounds-data">{data}</script></section>
<section><h2>Latest rounds</h2>{part("rounds")}</section>
<section id="log"><h2>Actor log <select id="log-actor"></select> <label><input type="checkbox" id="follow" checked> follow</label></h2>{part("logs")}</section>"""
    return page(f"job {job_id}", body, stream=f"/events/jobs/{quote(job_id)}", active="jobs")
