"""Where a node's mldata is and how to authenticate to it: `EMBER_MLDATA_URL`, `_TOKEN`, `_DATA_DIR`.

Shared by the loader (which reads them) and the mldata service (whose settings extend these).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field

from ember.errors import Unavailable
from ember.settings import Settings

TOKEN_FILE = "_token"
URL_FILE = "_url"
"""Written by the node's mldata into its data dir: the URL its learners reach it at. The node's
flamelet, on the same host, announces it in the node's info (`NodeInfo.mldata_url`)."""


def write_url(data_dir: Path, url: str) -> None:
    """Record mldata's URL in `data_dir` (atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f"{URL_FILE}.tmp"
    tmp.write_text(url + "\n")
    os.replace(tmp, data_dir / URL_FILE)


def read_url(data_dir: Path | None) -> str:
    """The URL the node's mldata recorded in `data_dir`; "" when there is none."""
    if data_dir is None:
        return ""
    try:
        return (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return ""


class DataSettings(Settings):
    """The node's mldata address and token; the loader uses `url()`, `token()` and `node()`."""

    mldata_port: int = Field(default=8815, ge=0, le=65535)
    mldata_data_dir: Path | None = None
    """Default: `<EMBER_HOME>/mldata/<node>`."""
    mldata_token: str = ""
    """Empty: the server generates one into `<data-dir>/_token` (mode 0600), where loaders find it."""
    mldata_url: str = ""
    """Where loaders reach the node's mldata; default `grpc://127.0.0.1:<port>`."""

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
