"""mldata settings: `EMBER_MLDATA_*` plus the shared `EMBER_NODE_ID`, `EMBER_MQTT_URL`, ..."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field

from ember.errors import Unavailable
from ember.settings import Settings

TOKEN_FILE = "_token"


class MldataSettings(Settings):
    """Server and loader settings; the loader uses `mldata_url` and the token."""

    mldata_host: str = "0.0.0.0"
    """Interface the Flight server binds; edge devices push from other hosts (token required)."""
    mldata_port: int = Field(default=8815, ge=0, le=65535)
    mldata_data_dir: Path | None = None
    """Default: `<EMBER_HOME>/mldata/<node>`."""
    mldata_token: str = ""
    """Empty: the server generates one into `<data-dir>/_token` (mode 0600), where loaders find it."""
    mldata_url: str = ""
    """Where loaders reach the node's mldata; default `grpc://127.0.0.1:<port>`."""
    mldata_compression: Literal["none", "snappy", "lz4", "zstd", "gzip"] = "none"
    """Parquet codec. `none`: sensor channels (noisy floats) shrank only ~6% with snappy here,
    while writing took 25-50% longer with snappy (docs/benchmarks.md)."""
    mldata_flush_rows: int = Field(default=50_000, gt=0)
    """Ingestion flushes a tag's buffer into a partition once it holds this many readings ..."""
    mldata_flush_seconds: float = Field(default=10.0, gt=0)
    """... or once its oldest reading is this old."""
    mldata_ingest: bool = True
    """Subscribe to `data/{tag}` on the broker; off: Flight only."""
    mldata_batch_rows: int = Field(default=1 << 17, gt=0)
    """Rows per record batch streamed by `do_get` from a Parquet file."""
    mldata_serving_copies: bool = True
    """Keep an Arrow IPC copy of each partition under `serving/` that `do_get` streams without
    decoding (~1.5x faster to fetch; costs about the uncompressed size on disk)."""

    def data_dir(self) -> Path:
        return (self.mldata_data_dir or self.home / "mldata" / (self.node_id or "local")).expanduser()

    def url(self) -> str:
        return self.mldata_url or f"grpc://127.0.0.1:{self.mldata_port}"

    def node(self) -> str:
        return self.node_id or "local"

    def token(self, *, create: bool = False) -> str:
        """The configured token, else the one in the data dir (generated there if `create`)."""
        if self.mldata_token:
            return self.mldata_token
        path = self.data_dir() / TOKEN_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            if not create:
                raise Unavailable(f"no mldata token: set EMBER_MLDATA_TOKEN (or start mldata once to create {path})") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return token
