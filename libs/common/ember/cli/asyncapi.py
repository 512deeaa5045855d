"""`ember asyncapi`: the AsyncAPI 3.0 document of every topic and payload."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from ember.asyncapi import build_document, render
from ember.cli.common import console, settings


class Format(StrEnum):
    yaml = "yaml"
    json = "json"


def asyncapi(
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    fmt: Format | None = typer.Option(None, "--format", "-f", help="yaml or json (default: from the file suffix, else yaml)."),
) -> None:
    """Print (or write) the AsyncAPI 3.0 document generated from Ember's topic map and pydantic models."""
    s = settings()
    chosen = fmt or (Format.json if output is not None and output.suffix.lower() == ".json" else Format.yaml)
    text = render(build_document(s.topic_root), chosen.value)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"wrote {output} ({chosen.value}, {len(text)} bytes)")
