"""The Arrow Flight server of one node's mldata; a thin transport over `PartitionStore`.

- `do_put`, descriptor path `[tag]`: append one partition; the server answers with one
  metadata message, JSON `{"partition", "rows", "bytes", "duplicate"}`.
- `list_flights`, criteria JSON `{"tags": [...]}` (empty: all): one FlightInfo per partition,
  descriptor path `[tag, partition]`, ticket = partition name.
- `do_get`, ticket = partition name: the partition as record batches, streamed.
- actions `tags` (JSON list of per-tag stats) and `drop` (`{"partition": name}` or `{"tag": t}`).

Errors: an `EmberError` becomes a `FlightServerError` whose message is the public message and
whose `extra_info` is the JSON error (`{"code", "message", "details"}`); anything unexpected is
logged and becomes a `FlightInternalError` without detail.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ember.errors import EmberError, InvalidRequest
from ember.log import get_logger
from ember.data.auth import BearerTokenMiddlewareFactory
from ember.metrics import MLDATA_SERVED_BYTES, MLDATA_SERVED_ROWS
from ember.mldata.names import check_tag
from ember.mldata.store import Partition, PartitionStore

log = get_logger("ember.mldata.server")
F = TypeVar("F", bound=Callable[..., Any])

ACTIONS = {
    "tags": "per-tag partitions, rows, bytes, first and last `ts` (JSON list)",
    "drop": 'delete a partition or a whole tag: {"partition": name} or {"tag": tag}',
    "stats": "MQTT ingestion counters (messages, readings, malformed, flushes, ...)",
}


class ListCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[str] | None = None


class DropRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partition: str | None = None
    tag: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DropRequest:
        if (self.partition is None) == (self.tag is None):
            raise ValueError("give exactly one of 'partition' or 'tag'")
        return self


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise InvalidRequest(f"invalid request body: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None


def _translated(method: F) -> F:
    """The one place where exceptions become Flight errors."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except flight.FlightError:
            raise
        except EmberError as exc:
            log.info("mldata.call_refused", call=method.__name__, code=exc.code, reason=exc.message)
            raise flight.FlightServerError(exc.message, extra_info=json.dumps(exc.to_dict()).encode()) from None
        except Exception:
            log.exception("mldata.call_failed", call=method.__name__)
            raise flight.FlightInternalError("internal error (see the mldata log)") from None

    return wrapper  # type: ignore[return-value]


def flight_info(part: Partition) -> flight.FlightInfo:
    descriptor = flight.FlightDescriptor.for_path(part.tag, part.name)
    endpoint = flight.FlightEndpoint(part.name.encode(), [])
    return flight.FlightInfo(part.schema, descriptor, [endpoint], part.rows, part.bytes)


class MldataFlightServer(flight.FlightServerBase):
    """Serves one `PartitionStore`; every call needs `authorization: Bearer <token>`."""

    def __init__(
        self,
        store: PartitionStore,
        *,
        location: str,
        token: str,
        batch_size: int = 1 << 17,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(location, middleware={"auth": BearerTokenMiddlewareFactory(token)})
        self.store = store
        self.batch_size = batch_size
        self.stats = stats or dict

    @_translated
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        tags = _parse(ListCriteria, criteria).tags
        return iter([flight_info(p) for p in self.store.partitions(tags)])

    @_translated
    def get_flight_info(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        path = [p.decode() for p in descriptor.path or []]
        if len(path) != 2:
            raise InvalidRequest("descriptor path must be [tag, partition]")
        return flight_info(self.store.get(path[1]))

    @_translated
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        schema, batches = self.store.iter_batches(ticket.ticket.decode(errors="replace"), self.batch_size)
        return flight.GeneratorStream(schema, _counted(batches))

    @_translated
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        path = [p.decode(errors="replace") for p in descriptor.path or []]
        if len(path) != 1:
            raise InvalidRequest("do_put descriptor path must be [tag]")
        tag = check_tag(path[0])
        result = self.store.write(tag, reader.schema, (chunk.data for chunk in reader if chunk.data is not None))
        part = result.partition
        log.info("mldata.partition_put", tag=tag, partition=part.name, rows=part.rows, bytes=part.bytes, duplicate=result.duplicate)
        reply = {"partition": part.name, "rows": part.rows, "bytes": part.bytes, "duplicate": result.duplicate}
        writer.write(pa.py_buffer(json.dumps(reply).encode()))

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    @_translated
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[flight.Result]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == "tags":
            payload: Any = [s.to_dict() for s in self.store.tags()]
        elif action.type == "drop":
            request = _parse(DropRequest, body)
            dropped = self.store.drop(name=request.partition, tag=request.tag)
            log.info("mldata.partitions_dropped", partitions=dropped)
            payload = {"dropped": dropped}
        elif action.type == "stats":
            payload = self.stats()
        else:
            raise InvalidRequest(f"unknown action {action.type!r}; known: {sorted(ACTIONS)}")
        return iter([flight.Result(json.dumps(payload).encode())])


def _counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches`, counted into the served rows and bytes metrics as they are sent."""
    for batch in batches:
        MLDATA_SERVED_ROWS.inc(batch.num_rows)
        MLDATA_SERVED_BYTES.inc(batch.nbytes)
        yield batch
