"""Settings of `ember ui` (`EMBER_UI_*`)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from ember.settings import Settings

VIEWER = "viewer"
OPERATOR = "operator"


class UiSettings(Settings):
    ui_host: str = "127.0.0.1"
    """Address the dashboard binds; loopback by default (it acts with the UI's identity for anyone who reaches it)."""
    ui_port: int = Field(default=8765, ge=0, le=65535)
    """0: a free port (the URL is logged and printed)."""
    ui_mlflow_url: str = ""
    """The MLflow tracking UI's URL; when set, a job's run and model version link to it."""
    ui_min_interval: float = Field(default=0.2, gt=0)
    """At most one refetch of a view per this many seconds, whatever the event rate."""
    ui_client_id: str = ""

    def role(self) -> str:
        """The role of the identity the UI acts with: `viewer` or `operator` (a user bundle's
        `role`). Without an identity (an unsecured local stack) the UI can do what the CLI can."""
        if not self.identity:
            return OPERATOR
        try:
            bundle = json.loads(Path(self.identity).expanduser().read_text())
        except (OSError, ValueError):
            return VIEWER
        return OPERATOR if bundle.get("role") == OPERATOR else VIEWER
