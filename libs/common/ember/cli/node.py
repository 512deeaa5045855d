"""`ember node list`: the worker nodes the manager knows, with status, capabilities, data and actors."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from ember.cli.common import JSON_OPTION, TIMEOUT_OPTION, console, print_json, request, styled, table

app = typer.Typer(help="Worker nodes (each runs a flamelet).", no_args_is_help=True)


def _actors(actors: list[Any]) -> str:
    out = []
    for a in actors:
        if isinstance(a, dict):
            url = f" {a['url']}" if a.get("url") else ""
            out.append(f"{a.get('actor', '?')} ({a.get('role', '')}, {a.get('state', '')}){url}")
        else:
            out.append(str(a))
    return "\n".join(out) or "-"


def _data(info: dict[str, Any]) -> str:
    data = info.get("data") or {}
    return "\n".join(f"{tag} ({rows} rows)" for tag, rows in sorted(data.items())) or "-"


@app.command("list")
def list_nodes(as_json: bool = JSON_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """Table of nodes: node, status, labels, capabilities, data tags, actors of live jobs and serving actors."""
    nodes = request("nodes.list", timeout=timeout) or []
    if as_json:
        print_json(nodes)
        return
    t = table("NODE", "STATUS", "LABELS", "CAPABILITIES", "RUNTIMES", "CPUS", "DATA TAGS", "ACTORS")
    for n in nodes:
        info = n.get("info") or {}
        t.add_row(
            n["node"],
            styled(n.get("status", "unknown")),
            escape("\n".join(f"{k}={v}" for k, v in sorted((info.get("labels") or {}).items())) or "-"),
            ", ".join(info.get("capabilities", [])),
            ", ".join(info.get("runtimes", [])),
            str(info.get("cpus", "")),
            escape(_data(info)),
            escape(_actors(n.get("actors", []))),
        )
    console.print(t if nodes else "no nodes yet: start some with `ember up` or `ember flamelet run --node NAME`")
