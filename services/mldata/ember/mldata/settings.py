"""mldata settings: `EMBER_MLDATA_*` plus the shared `EMBER_NODE_ID`, `EMBER_MQTT_URL`, ..."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ember.data.settings import DataSettings

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


class MldataSettings(DataSettings):
    """The server's settings: the address and token (`DataSettings`), where it listens, how it
    stores and ingests."""

    mldata_host: str = "127.0.0.1"
    """Address the Flight server binds: loopback for the local stack; on an edge box, the node's own
    address on the network its learners and devices reach it through (token required)."""

    def advertised_url(self, port: int) -> str:
        """Where the node's learners reach this server: `EMBER_MLDATA_URL` if set, else the bound
        address (loopback when bound to every interface: set the URL for other hosts then)."""
        if self.mldata_url:
            return self.mldata_url
        host = self.mldata_host if self.mldata_host not in WILDCARDS else "127.0.0.1"
        return f"grpc://[{host}]:{port}" if ":" in host else f"grpc://{host}:{port}"
    mldata_compression: Literal["none", "snappy", "lz4", "zstd", "gzip"] = "none"
    """Parquet codec. `none` by default: noisy float sensor channels barely compress, and a codec
    slows every write (figures in docs/benchmarks.md)."""
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
    decoding (faster fetches for about the uncompressed size on disk; docs/benchmarks.md)."""
