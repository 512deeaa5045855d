"""Errors of the data plane; each maps to one Flight status in `ember.mldata.server`."""

from __future__ import annotations

from ember.errors import Conflict, InvalidRequest, NotFound


class InvalidTag(InvalidRequest):
    """A data tag or partition name with characters outside the safe set."""

    code = "invalid_tag"


class SchemaMismatch(Conflict):
    """A put whose schema is incompatible with the schema the tag's first partition fixed."""

    code = "schema_mismatch"


class PartitionNotFound(NotFound):
    code = "partition_not_found"


class NoDataError(NotFound):
    """No partition on the node matches the requested tags."""

    code = "no_data"
