"""`ember model list|serve|stop`: registered MLflow models and where Ember serves them."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from ember.cli.common import JSON_OPTION, TIMEOUT_OPTION, console, fail, print_json, request, settings, table

app = typer.Typer(help="Registered models (MLflow) and their serving actors on nodes.", no_args_is_help=True)

LABEL_OPTION = typer.Option([], "--label", "-l", metavar="KEY=VALUE", help="serve on every online node carrying this label (repeatable)")
NODE_OPTION = typer.Option([], "--node", "-n", help="a node to serve on (repeatable)")


def parse_labels(labels: list[str]) -> dict[str, str]:
    out = {}
    for pair in labels:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"a label is KEY=VALUE, got {pair!r}", 2)
        out[key.strip()] = value.strip()
    return out


def registered() -> list[dict[str, Any]]:
    """Every registered model with its versions (newest first), from the tracking store in settings."""
    from mlflow.tracking import MlflowClient  # mlflow is heavy: only this command imports it

    client = MlflowClient(tracking_uri=settings().resolved_mlflow_uri())
    out = []
    for model in client.search_registered_models():
        versions = sorted((int(v.version) for v in client.search_model_versions(f"name='{model.name}'")), reverse=True)
        out.append({"model": model.name, "versions": [str(v) for v in versions]})
    return sorted(out, key=lambda m: m["model"])


@app.command("list")
def list_models(as_json: bool = JSON_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """Table of registered models: versions, and which version is served on which nodes."""
    served = {s["model"]: s for s in request("models.serving", timeout=timeout) or []}
    rows = registered()
    known = {row["model"] for row in rows}
    rows += [{"model": name, "versions": []} for name in sorted(served) if name not in known]
    for row in rows:
        row["serving"] = served.get(row["model"])
    if as_json:
        print_json(rows)
        return
    t = table("MODEL", "VERSIONS", "SERVED VERSION", "NODES", "LABELS", "SCORES TAG")
    for row in rows:
        s = row["serving"] or {}
        t.add_row(row["model"], ", ".join(row["versions"]) or "-", (s.get("version") or "latest") if s else "-",
                  ", ".join(s.get("nodes", [])) or "-", escape(", ".join(f"{k}={v}" for k, v in (s.get("labels") or {}).items())) or "-",
                  s.get("tag") or "-")
    console.print(t if rows else "no registered models yet: a job with `tracking.model_name` registers one")


@app.command("serve")
def serve(
    model: str = typer.Argument(..., help="registered model name"),
    version: str = typer.Option("", "--version", "-v", help="model version (default: the latest)"),
    node: list[str] = NODE_OPTION,
    label: list[str] = LABEL_OPTION,
    tag: str = typer.Option("", "--tag", help="also score the readings of this data tag onto nodes/{node}/predictions/{model}"),
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Run MODEL as a serving actor (HTTP `POST /invocations`) on the given nodes."""
    data = {"model": model, "version": version, "nodes": node, "labels": parse_labels(label), "tag": tag}
    result = request("models.serve", data, timeout=timeout)
    if as_json:
        print_json(result)
        return
    where = ", ".join(result.get("nodes", [])) or "no online node yet"
    console.print(f"serving {escape(model)} {('v' + version) if version else '(latest)'} on {escape(where)}: "
                  "`ember node list` shows each actor and its URL")


@app.command("stop")
def stop(
    model: str = typer.Argument(..., help="served model name"),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Stop serving MODEL on the given nodes (none given: everywhere)."""
    result = request("models.stop", {"model": model, "nodes": node}, timeout=timeout)
    if as_json:
        print_json(result)
        return
    left = ", ".join(result.get("nodes", []))
    console.print(f"stopped {escape(model)} on {escape(', '.join(node) or 'every node')}" + (f"; still served on {escape(left)}" if left else ""))
