"""Failure reasons as events record them: one plain line of bounded length.

A reason is read in `ember job get`, in event consumers and in JSON replies, so it carries no
terminal colour codes, no line breaks and no log dump; the full text stays in the process's log
(and an actor's last lines in its own `log_tail` field).
"""

from __future__ import annotations

import re

MAX_REASON = 500
"""Characters a recorded reason keeps (the last one an ellipsis when it was cut)."""

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain(text: str) -> str:
    """`text` without ANSI escape sequences (colours, cursor moves, titles) or control characters."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """`text` as one plain line: escapes dropped, non-empty lines joined with ` | `, whitespace
    collapsed, cut to `limit` characters ending in `…`."""
    lines = (" ".join(line.split()) for line in plain(text.replace("\r\n", "\n")).split("\n"))
    joined = " | ".join(line for line in lines if line)
    return joined if len(joined) <= limit else joined[: limit - 1].rstrip() + "…"


def last_line(text: str) -> str:
    """The last non-empty line of `text`, plain (e.g. the error at the end of a log tail)."""
    for line in reversed(plain(text).splitlines()):
        if line.strip():
            return " ".join(line.split())
    return ""
