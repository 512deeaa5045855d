"""Reading an actor's log file: new lines since the last read, and the last N lines."""

from __future__ import annotations

from pathlib import Path

MAX_LINE = 4_000


class LogTail:
    """Follows one log file from an offset; `read_new()` returns complete new lines."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def read_new(self, *, flush: bool = False, limit: int = 1 << 20) -> list[str]:
        """Complete lines appended since the last call (and the unterminated rest if `flush`)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(limit)
        except OSError:
            chunk = b""
        self.offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        if flush and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace")[:MAX_LINE] for line in lines]


def last_lines(path: Path, count: int = 20, *, window: int = 64 * 1024) -> list[str]:
    """The last `count` non-empty lines of `path` (reads at most `window` bytes from its end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - window))
            data = fh.read()
    except OSError:
        return []
    lines = [line.decode("utf-8", "replace")[:MAX_LINE] for line in data.split(b"\n") if line.strip()]
    return lines[-count:]
