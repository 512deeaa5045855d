"""`ember data push|ls|drop`: a node's ML data, through that node's mldata (Arrow Flight).

A node's mldata URL and token come from the local stack's state (`$EMBER_HOME/nodes/<node>/mldata.json`,
written by `ember up`), else from the node's info (`mldata_url`, via the manager) with `--token` or
`EMBER_MLDATA_TOKEN`.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape

from ember.cli.common import JSON_OPTION, console, fail, print_json, request, settings, table
from ember.errors import EmberError, InvalidRequest, NotFound, Unavailable

if TYPE_CHECKING:
    import pyarrow as pa

    from ember.data.client import MldataClient

T = TypeVar("T")

app = typer.Typer(help="Push, list and drop ML data on a node's mldata (data never leaves its node).", no_args_is_help=True)

NODE_OPTION = typer.Option(None, "--node", "-n", help="Node id (default: the only node, when there is one).")
TOKEN_OPTION = typer.Option(None, "--token", envvar="EMBER_MLDATA_TOKEN", help="mldata token when the node is not local.")


def local_nodes() -> dict[str, dict[str, Any]]:
    """Node -> `{url, token, data_dir}` of the mldata servers the local stack started."""
    out = {}
    for state in sorted((settings().home / "nodes").glob("*/mldata.json")):
        try:
            out[state.parent.name] = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
    return out


def targets(node: str | None, token: str | None, *, one: bool) -> dict[str, tuple[str, str]]:
    """Node -> (url, token) to talk to; `one` requires a single node."""
    local = local_nodes()
    found: dict[str, tuple[str, str]] = {n: (s["url"], s["token"]) for n, s in local.items()}
    if (node is not None and node not in found) or not found:
        for n in request("nodes.list", timeout=5.0) or []:
            url = (n.get("info") or {}).get("mldata_url")
            if url and n["node"] not in found and token:
                found[n["node"]] = (url, token)
    if node is not None:
        if node not in found:
            raise NotFound(f"no mldata known for node {node!r} (not in the local stack; pass --token for a remote node)")
        return {node: found[node]}
    if not found:
        raise Unavailable("no node with an mldata is known: start the stack with `ember up`")
    if one and len(found) > 1:
        raise InvalidRequest(f"several nodes hold data ({', '.join(sorted(found))}): choose one with --node")
    return found


def _client(url: str, token: str) -> MldataClient:
    from ember.data.client import MldataClient  # pyarrow.flight is imported only when needed

    return MldataClient(url, token, timeout=30)


def read_table(path: Path) -> pa.Table:
    """A pyarrow table from .parquet, .csv, .arrow/.feather or .jsonl/.json."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.feather as feather
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    readers = {".parquet": pq.read_table, ".csv": pcsv.read_csv, ".arrow": feather.read_table, ".feather": feather.read_table}
    readers.update({".jsonl": pjson.read_json, ".json": pjson.read_json})
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InvalidRequest(f"unsupported file type {path.suffix!r}: use .parquet, .csv, .arrow, .feather or .jsonl")
    try:
        return reader(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}") from None


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except EmberError as exc:
        fail(exc)
    except typer.Exit:
        raise
    except Exception as exc:  # Flight transport errors
        fail(Unavailable(f"mldata request failed: {exc}"))


@app.command()
def push(
    file: Path = typer.Argument(..., help="Data file: .parquet, .csv, .arrow/.feather or .jsonl."),
    tag: str = typer.Option(..., "--tag", "-t", help="Data tag the partition is stored under (jobs select data by tag)."),
    node: str | None = NODE_OPTION,
    token: str | None = TOKEN_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Upload FILE (.parquet, .csv, .arrow/.feather, .jsonl) as one partition of TAG to a node's mldata."""
    if not file.is_file():
        fail(NotFound(f"no file at {file}"))

    def go() -> tuple[str, dict[str, Any]]:
        data = read_table(file)
        (name, (url, tok)), = targets(node, token, one=True).items()
        with _client(url, tok) as client:
            return name, client.push(tag, data)

    name, result = _guard(go)
    if as_json:
        print_json({"node": name, **result})
    else:
        dup = " (identical partition already stored)" if result.get("duplicate") else ""
        console.print(f"{name}: stored {result.get('rows')} rows as {result.get('partition')}{dup}")


@app.command("ls")
def ls(node: str | None = NODE_OPTION, token: str | None = TOKEN_OPTION, as_json: bool = JSON_OPTION) -> None:
    """List the data tags on every node (or one): partitions, rows, bytes, time range."""

    def go() -> list[dict[str, Any]]:
        rows = []
        for name, (url, tok) in targets(node, token, one=False).items():
            with _client(url, tok) as client:
                rows += [{"node": name, **tag} for tag in client.tags()]
        return rows

    rows = _guard(go)
    if as_json:
        print_json(rows)
        return
    t = table("NODE", "TAG", "PARTITIONS", "ROWS", "BYTES")
    for r in rows:
        t.add_row(r["node"], escape(str(r.get("tag", ""))), str(r.get("partitions", "")), str(r.get("rows", "")), str(r.get("bytes", "")))
    console.print(t if rows else "no data on any node yet: `ember data push FILE --tag T` or `ember devices mock`")


@app.command()
def drop(
    tag: str | None = typer.Option(None, "--tag", "-t", help="Drop every partition of this tag."),
    partition: str | None = typer.Option(None, "--partition", "-p", help="Drop one partition (name as in the store)."),
    node: str | None = NODE_OPTION,
    token: str | None = TOKEN_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete a tag's partitions (or one partition) from a node's mldata."""
    if (tag is None) == (partition is None):
        fail(InvalidRequest("give exactly one of --tag or --partition"))

    def go() -> dict[str, list[str]]:
        out = {}
        for name, (url, tok) in targets(node, token, one=partition is not None).items():
            with _client(url, tok) as client:
                out[name] = client.drop(partition=partition, tag=tag)
        return out

    dropped = _guard(go)
    if as_json:
        print_json(dropped)
        return
    for name, parts in dropped.items():
        console.print(f"{name}: dropped {len(parts)} partition(s)")

