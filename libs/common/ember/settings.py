"""Ember settings: one pydantic-settings model per concern, read from `EMBER_*` variables.

Loaders take the environment as a parameter (`Settings.from_env(env)`) so tests can pass one
without touching `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


def ember_home(env: Mapping[str, str] | None = None) -> Path:
    """Ember's home folder (`EMBER_HOME`, default `~/.ember`): event log, broker file, venvs."""
    env = os.environ if env is None else env
    return Path(env.get("EMBER_HOME") or Path.home() / ".ember").expanduser()


class Settings(BaseSettings):
    """Settings shared by every Ember process."""

    model_config = SettingsConfigDict(env_prefix="EMBER_", extra="ignore")

    home: Path = Field(default_factory=lambda: ember_home())
    mqtt_url: str = ""
    """Broker URL `mqtt://host:port`. Empty: the broker recorded by `ember up`, else localhost."""
    topic_root: str = "ember/v1"
    eventlog_url: str = ""
    """`sqlite:///path` or `mongodb://...`. Empty: SQLite file under the home folder."""
    mlflow_tracking_uri: str = ""
    node_id: str = ""
    log_format: str = "auto"
    """`json`, `console` or `auto` (console on a TTY, JSON lines otherwise)."""
    log_level: str = "info"
    keepalive: int = 5
    """MQTT keepalive in seconds; a dead flamelet is seen offline within 1.5x this."""
    broker_outage: float = Field(default=60.0, ge=0)
    """Seconds services and actors ride out a lost broker (a publish waits that long for the
    connection to come back before it fails); their connection itself is retried for ever."""

    @field_validator("home", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Self:
        env = dict(os.environ if env is None else env)
        values = {
            key[len("EMBER_") :].lower(): value
            for key, value in env.items()
            if key.startswith("EMBER_") and key[len("EMBER_") :].lower() in cls.model_fields
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" not in values:
            values["home"] = ember_home(env)
        return cls.model_validate(values)

    # Derived locations -------------------------------------------------------------------
    @property
    def broker_file(self) -> Path:
        return self.home / "broker.json"

    def resolved_mqtt_url(self) -> str:
        """The explicit URL, else the broker `ember up` recorded, else localhost:1883."""
        if self.mqtt_url:
            return self.mqtt_url
        try:
            import json

            return json.loads(self.broker_file.read_text())["url"]
        except (OSError, ValueError, KeyError):
            return DEFAULT_MQTT_URL

    def resolved_eventlog_url(self) -> str:
        return self.eventlog_url or f"sqlite:///{self.home / 'events.sqlite3'}"

    def resolved_mlflow_uri(self) -> str:
        """The explicit URI, else the tracking server `ember up` recorded, else the SQLite store
        under the home folder (the one `ember up`'s server keeps, readable once it stopped)."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        try:
            import json

            recorded = json.loads(self.broker_file.read_text()).get("mlflow")
        except (OSError, ValueError, AttributeError):
            recorded = None
        return recorded if isinstance(recorded, str) and recorded else f"sqlite:///{self.home / 'mlflow.sqlite3'}"


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); port defaults to 1883."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL scheme {parsed.scheme!r} in {url!r} (use mqtt://host:port)")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883
