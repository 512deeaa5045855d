"""The dashboard's web app (Starlette): pages, server-sent event streams, the cancel action.

    GET  /                    overview: nodes and jobs          GET /events/nodes
    GET  /nodes               nodes                              GET /events/jobs?state=
    GET  /jobs?state=S        jobs, optionally of one state      GET /events/jobs/{job}
    GET  /jobs/{job}          one job                            GET /api/jobs/{job}/rounds
    POST /api/jobs/{job}/cancel   operators only (403 for a viewer); needs `X-Ember: 1`
    GET  /healthz             feeds and clients open

An event stream sends `data: {"parts": {element id: html}, ...}` lines, the latest value of its
view each time it changes (a slow client skips to the latest), and a comment every
`HEARTBEAT` seconds so a dead connection is noticed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ember.errors import EmberError
from ember.ui import pages
from ember.ui.hub import Feed, Hub
from ember.ui.settings import OPERATOR

HEARTBEAT = 15.0
LIVE_ROUNDS = 50
"""Rounds each update of a job carries; the page asks for the rest only when it missed some."""
STATIC = Path(__file__).parent / "static"
ERROR_STATUS = {"not_found": 404, "conflict": 409, "invalid_request": 400, "forbidden": 403}


def create_app(hub: Hub, *, role: str, mlflow_ui: str = "") -> Starlette:
    can_cancel = role == OPERATOR

    def job_fetch(job: str, rounds: int | None) -> Callable[[], Any]:
        async def fetch() -> Any:
            return await hub.request("jobs.get", {"job": job, **({"rounds": rounds} if rounds is not None else {})})

        return fetch

    async def nodes() -> Any:
        return await hub.request("nodes.list")

    async def jobs() -> Any:
        return await hub.request("jobs.list")

    async def initial(fetch: Callable[[], Any]) -> Any:
        try:
            return await fetch()
        except EmberError as exc:
            return {"error": exc.message}

    def job_update(job: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict) and "error" in value:
            return {"parts": pages.job_parts(value, {}, can_cancel=can_cancel, mlflow_ui=mlflow_ui)}
        logs = hub.job_logs(job, value.get("actors", []))
        return {
            "parts": pages.job_parts(value, logs, can_cancel=can_cancel, mlflow_ui=mlflow_ui),
            "rounds": value.get("rounds", []),
            "rounds_completed": value.get("rounds_completed", 0),
            "state": value["state"],
        }

    # --- pages -------------------------------------------------------------------------------
    async def overview(request: Request) -> Response:
        body = (
            f'<section><h2>Nodes</h2><div id="nodes" class="part">{pages.nodes_table(await initial(nodes))}</div></section>'
            f'<section><h2>Jobs</h2><div id="jobs" class="part">{pages.jobs_table(await initial(jobs))}</div></section>'
        )
        return HTMLResponse(pages.page("overview", body, stream="/events/nodes /events/jobs", active="overview"))

    async def nodes_page(request: Request) -> Response:
        body = f'<section><h2>Nodes</h2><div id="nodes" class="part">{pages.nodes_table(await initial(nodes))}</div></section>'
        return HTMLResponse(pages.page("nodes", body, stream="/events/nodes", active="nodes"))

    async def jobs_page(request: Request) -> Response:
        state = request.query_params.get("state", "")
        state = state if state in pages.JOB_STATES else ""
        body = f'<section><h2>Jobs</h2>{pages.state_filter(state)}<div id="jobs" class="part">{pages.jobs_table(await initial(jobs), state)}</div></section>'
        return HTMLResponse(pages.page("jobs", body, stream=f"/events/jobs?state={state}", active="jobs"))

    async def job_page(request: Request) -> Response:
        job = request.path_params["job"]
        value = await initial(job_fetch(job, None))
        update = job_update(job, value)
        status = 404 if isinstance(value, dict) and "error" in value else 200
        return HTMLResponse(pages.job_page(job, update["parts"], update.get("rounds", [])), status_code=status)

    # --- streams -----------------------------------------------------------------------------
    def stream(key: str, fetch: Callable[[], Any], render: Callable[[Any], dict[str, Any]]) -> Response:
        async def events() -> AsyncIterator[str]:
            feed: Feed
            async with hub.watch(key, fetch) as feed:
                seen = 0
                yield "retry: 2000\n\n"
                while True:
                    if await feed.wait_newer(seen, HEARTBEAT):
                        seen = feed.version
                        yield f"data: {json.dumps(render(feed.value), separators=(',', ':'))}\n\n"
                    else:
                        yield ": keepalive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def nodes_events(request: Request) -> Response:
        return stream("nodes", nodes, lambda value: {"parts": {"nodes": pages.nodes_table(value)}})

    async def jobs_events(request: Request) -> Response:
        state = request.query_params.get("state", "")
        return stream("jobs", jobs, lambda value: {"parts": {"jobs": pages.jobs_table(value, state)}})

    async def job_events(request: Request) -> Response:
        job = request.path_params["job"]
        return stream(f"job:{job}", job_fetch(job, LIVE_ROUNDS), lambda value: job_update(job, value))

    # --- actions -----------------------------------------------------------------------------
    async def job_rounds(request: Request) -> Response:
        try:
            value = await hub.request("jobs.get", {"job": request.path_params["job"]})
        except EmberError as exc:
            return JSONResponse({"error": exc.message}, status_code=ERROR_STATUS.get(exc.code, 502))
        return JSONResponse(value.get("rounds", []))

    async def cancel(request: Request) -> Response:
        if request.headers.get("x-ember") != "1":  # a custom header: a cross-site form cannot send it
            return JSONResponse({"error": "missing X-Ember header"}, status_code=400)
        if not can_cancel:
            return JSONResponse({"error": f"the dashboard's identity is a {role}: only an operator may cancel"}, status_code=403)
        try:
            value = await hub.request("jobs.cancel", {"job": request.path_params["job"]})
        except EmberError as exc:
            return JSONResponse({"error": exc.message}, status_code=ERROR_STATUS.get(exc.code, 502))
        return JSONResponse({"job": value["job"], "state": value["state"]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": hub.bus.connected, "feeds": len(hub.feeds), "clients": sum(f.clients for f in hub.feeds.values())})

    return Starlette(
        routes=[
            Route("/", overview),
            Route("/nodes", nodes_page),
            Route("/jobs", jobs_page),
            Route("/jobs/{job}", job_page),
            Route("/events/nodes", nodes_events),
            Route("/events/jobs", jobs_events),
            Route("/events/jobs/{job}", job_events),
            Route("/api/jobs/{job}/rounds", job_rounds),
            Route("/api/jobs/{job}/cancel", cancel, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
