"""Schema compatibility between a tag's reference schema and a new partition.

Compatible means: the same column names (order does not matter) and, per column, the same
type, or a null-typed column on either side (an all-empty column). Metadata and nullability
are ignored. `describe_diff` names every column that differs, for the error message.
"""

from __future__ import annotations

import pyarrow as pa


def diff(reference: pa.Schema, new: pa.Schema) -> list[str]:
    """Human-readable differences; empty when `new` may join a tag fixed by `reference`."""
    ref = {f.name: f.type for f in reference}
    got = {f.name: f.type for f in new}
    out: list[str] = []
    missing = [n for n in ref if n not in got]
    extra = [n for n in got if n not in ref]
    if missing:
        out.append(f"missing columns {missing}")
    if extra:
        out.append(f"unexpected columns {extra}")
    for name, rtype in ref.items():
        gtype = got.get(name)
        if gtype is None or gtype == rtype or pa.types.is_null(gtype) or pa.types.is_null(rtype):
            continue
        out.append(f"column {name!r} is {gtype}, the tag has {rtype}")
    return out


def describe_diff(tag: str, differences: list[str]) -> str:
    return f"schema of the upload does not match tag {tag!r}: " + "; ".join(differences)


def merge(reference: pa.Schema, new: pa.Schema) -> pa.Schema:
    """The reference after accepting `new`: null-typed columns take `new`'s concrete type."""
    if not any(pa.types.is_null(f.type) for f in reference):
        return reference
    return pa.unify_schemas([reference, new], promote_options="permissive")
