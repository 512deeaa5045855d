"""Learner-side loader and a small client for the node's mldata (ls, push, drop).

`load_table(tags)` lists the partitions of `tags`, streams each with `do_get` (in parallel,
straight into memory: no temporary files), merges them with
`pa.concat_tables(promote_options="permissive")` (missing columns become nulls, compatible
types are widened) and sorts by `ts` when that column exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from ember.errors import from_reply
from ember.data.auth import bearer_headers
from ember.data.errors import InvalidTag, NoDataError, PartitionNotFound, SchemaMismatch
from ember.data.settings import DataSettings

DEFAULT_PARALLEL = 4
_TYPED = {cls.code: cls for cls in (InvalidTag, SchemaMismatch, PartitionNotFound, NoDataError)}


def _typed(exc: flight.FlightError) -> Exception:
    """A server-side EmberError comes back as its own class; other Flight errors unchanged."""
    try:
        error = json.loads(exc.extra_info or b"")
    except ValueError:
        return exc
    if not isinstance(error, dict) or "code" not in error:
        return exc
    cls = _TYPED.get(error["code"])
    return cls(str(error.get("message", "")), details=error.get("details")) if cls else from_reply(error)


class MldataClient:
    """One Flight connection to an mldata server, authenticated by the node token."""

    def __init__(self, url: str, token: str, *, timeout: float | None = None) -> None:
        self.url = url
        self._flight = flight.connect(url)
        self._options = flight.FlightCallOptions(headers=bearer_headers(token), timeout=timeout)

    def __enter__(self) -> MldataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._flight.close()

    def partitions(self, tags: Iterable[str] | None = None) -> list[flight.FlightInfo]:
        criteria = b"" if tags is None else json.dumps({"tags": list(tags)}).encode()
        try:
            return list(self._flight.list_flights(criteria, self._options))
        except flight.FlightError as exc:
            raise _typed(exc) from None

    def read(self, partition: str | flight.FlightInfo) -> pa.Table:
        """One whole partition, streamed batch by batch into a table."""
        ticket = partition.endpoints[0].ticket if isinstance(partition, flight.FlightInfo) else flight.Ticket(partition)
        try:
            return self._flight.do_get(ticket, self._options).read_all()
        except flight.FlightError as exc:
            raise _typed(exc) from None

    def push(self, tag: str, data: pa.Table | pa.RecordBatchReader, *, batch_rows: int = 1 << 16) -> dict[str, Any]:
        """Upload one partition; returns `{"partition", "rows", "bytes", "duplicate"}`."""
        descriptor = flight.FlightDescriptor.for_path(tag)
        batches = data.to_batches(max_chunksize=batch_rows) if isinstance(data, pa.Table) else data
        try:
            writer, replies = self._flight.do_put(descriptor, data.schema, self._options)
            with writer:
                for batch in batches:
                    writer.write_batch(batch)
                writer.done_writing()
                reply = replies.read()
        except flight.FlightError as exc:
            raise _typed(exc) from None
        return json.loads(reply.to_pybytes()) if reply is not None else {}

    def _action(self, name: str, body: Mapping[str, Any] | None = None) -> Any:
        payload = json.dumps(body or {}).encode()
        try:
            results = list(self._flight.do_action(flight.Action(name, payload), self._options))
        except flight.FlightError as exc:
            raise _typed(exc) from None
        return json.loads(results[0].body.to_pybytes())

    def tags(self) -> list[dict[str, Any]]:
        """Per tag: partitions, rows, bytes, first_ts, last_ts."""
        return self._action("tags")

    def stats(self) -> dict[str, int]:
        """The server's MQTT ingestion counters."""
        return self._action("stats")

    def drop(self, *, partition: str | None = None, tag: str | None = None) -> list[str]:
        body = {"partition": partition} if partition is not None else {"tag": tag}
        return self._action("drop", body)["dropped"]


def load_table(
    tags: Iterable[str],
    *,
    url: str | None = None,
    token: str | None = None,
    sort_by: str | None = "ts",
    node: str | None = None,
    parallel: int | None = None,
    settings: DataSettings | None = None,
) -> pa.Table:
    """Every partition of `tags` on the local mldata as one table (see the module doc).

    `parallel` partitions are fetched at once (default 4: the server streams memory-mapped
    serving copies, so the streams wait on the transport, not on decoding). Raises
    `NoDataError("no data for tags [...] on node N")` when nothing matches.
    """
    tags = list(tags)
    parallel = parallel or DEFAULT_PARALLEL
    if url is None or token is None or node is None:
        found = settings or DataSettings.from_env()
        url = url or found.url()
        token = token or found.token()
        node = node or found.node()
    with MldataClient(url, token) as client:
        infos = client.partitions(tags)
        if not infos:
            raise NoDataError(f"no data for tags {tags} on node {node}", details={"tags": tags, "node": node})
        if len(infos) == 1 or parallel <= 1:
            tables = [client.read(info) for info in infos]
        else:
            with ThreadPoolExecutor(max_workers=min(parallel, len(infos))) as pool:
                tables = list(pool.map(client.read, infos))
    table = pa.concat_tables(tables, promote_options="permissive")
    if sort_by and sort_by in table.column_names:
        table = table.sort_by(sort_by)
    return table


__all__ = ["MldataClient", "NoDataError", "load_table"]
