"""Data tags and partition file names: `<tag>.<sha256 hex of the Parquet bytes>.parquet`."""

from __future__ import annotations

import re

from ember.data.errors import InvalidTag

_TAG = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
TAG_RE = re.compile(rf"^{_TAG}$")
PARTITION_RE = re.compile(rf"^(?P<tag>{_TAG})\.(?P<digest>[0-9a-f]{{64}})\.parquet$")
TMP_PREFIX = ".incoming-"
"""Uploads in progress; never matched by PARTITION_RE, swept at start-up."""


def check_tag(tag: str) -> str:
    """Return `tag` if it is 1-128 of `[A-Za-z0-9_.-]` starting with a letter or digit."""
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise InvalidTag(f"invalid data tag {tag!r}: use 1-128 of [A-Za-z0-9_.-], starting with a letter or digit")
    return tag


def partition_name(tag: str, digest: str) -> str:
    return f"{check_tag(tag)}.{digest}.parquet"


def parse_partition(name: str) -> tuple[str, str]:
    """`name` -> (tag, digest); raises InvalidTag for anything that is not a partition name."""
    found = PARTITION_RE.match(name) if isinstance(name, str) else None
    if not found:
        raise InvalidTag(f"invalid partition name {name!r}: expected <tag>.<sha256>.parquet")
    return found["tag"], found["digest"]
