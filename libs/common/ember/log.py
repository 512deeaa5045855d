"""Structured logging: JSON lines in services, readable output on a TTY.

Bind ids once (`log = log.bind(job=..., node=..., actor=...)`) and every later line carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog

_configured = False


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (a test harness or a daemon may replace it
    after logging was configured; the object captured at configure time may be closed by then)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(fmt: str = "auto", level: str = "info", *, service: str | None = None) -> None:
    """Configure structlog for this process; safe to call more than once."""
    global _configured
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if use_console else structlog.processors.JSONRenderer()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    _configured = True


def get_logger(name: str | None = None, **bound: object) -> structlog.typing.FilteringBoundLogger:
    if not _configured:
        configure()
    logger = structlog.get_logger(name)
    return logger.bind(**bound) if bound else logger
