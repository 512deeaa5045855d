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
    """Broker URL `mqtt://host:port` (`mqtts://` for TLS). Empty: the broker recorded by `ember up`, else localhost."""
    identity: str = ""
    """Path of an identity bundle from `ember provision` (username, password, CA certificate)."""
    mqtt_username: str = ""
    mqtt_password: str = Field(default="", repr=False)
    mqtt_ca_file: str = ""
    """CA certificate(s) that verify the broker over `mqtts://` (default: the bundle's, else the system's)."""
    mqtt_cert_file: str = ""
    """Client certificate sent over `mqtts://` (optional; with `mqtt_key_file`)."""
    mqtt_key_file: str = ""
    insecure: bool = False
    """`ember up` without authentication and ACL (anonymous clients may do anything): a private test only."""
    topic_root: str = "ember/v1"
    eventlog_url: str = ""
    """`sqlite:///path` or `mongodb://...`. Empty: SQLite file under the home folder."""
    mlflow_tracking_uri: str = ""
    registry: str = ""
    """Image registry `host:port` the builder pushes to and nodes pull from (docker runtime).
    Empty: the one `ember up --runtime docker` recorded in the home folder, if any."""
    node_id: str = ""
    log_format: str = "auto"
    """`json`, `console` or `auto` (console on a TTY, JSON lines otherwise)."""
    log_level: str = "info"
    bundle_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest code bundle `ember job submit` sends (packed bytes; docs/control-plane.md)."""
    bundle_fetch_timeout: float = Field(default=30.0, gt=0)
    """Seconds the builder or a flamelet waits for a job's retained code bundle."""
    keepalive: int = 5
    """MQTT keepalive in seconds; a dead flamelet is seen offline within 1.5x this."""
    broker_outage: float = Field(default=60.0, ge=0)
    """Seconds services and actors ride out a lost broker (a publish waits that long for the
    connection to come back before it fails); their connection itself is retried for ever."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of a long-running service's Prometheus `/metrics` endpoint; 0: none."""
    metrics_host: str = "127.0.0.1"

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        if value:
            parse_mqtt_url(value)  # a bad URL is a settings error, not a failure to connect
        return value

    @field_validator("home", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Self:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {
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

    def recorded_broker(self) -> dict[str, str]:
        """What `ember up` recorded in `broker.json` (`url`, and `identity` when secured); {} if none."""
        import json

        try:
            recorded = json.loads(self.broker_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}

    def resolved_mqtt_url(self) -> str:
        """The explicit URL, else the broker `ember up` recorded, else localhost:1883."""
        return self.mqtt_url or self.recorded_broker().get("url") or DEFAULT_MQTT_URL

    def resolved_identity(self) -> str:
        """The explicit identity bundle, else the operator bundle `ember up` recorded for the broker
        this process talks to (none when a username is set explicitly)."""
        if self.identity or self.mqtt_username:
            return self.identity
        recorded = self.recorded_broker()
        if recorded.get("identity") and recorded.get("url") == self.resolved_mqtt_url():
            return recorded["identity"]
        return ""

    @property
    def registry_file(self) -> Path:
        return self.home / "registry.json"

    def resolved_registry(self) -> str:
        """The explicit `EMBER_REGISTRY`, else the registry `ember up --runtime docker` recorded, else ""."""
        if self.registry:
            return self.registry
        try:
            import json

            return str(json.loads(self.registry_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            return ""

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


TLS_SCHEMES = ("mqtts", "ssl", "tls")


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); port defaults to 1883, or 8883 for `mqtts://` (TLS)."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp", *TLS_SCHEMES):
        raise ValueError(f"unsupported MQTT URL scheme {parsed.scheme!r} in {url!r} (use mqtt://host:port or mqtts://host:port)")
    return parsed.hostname or "127.0.0.1", parsed.port or (8883 if parsed.scheme in TLS_SCHEMES else 1883)


def mqtt_url_uses_tls(url: str) -> bool:
    """Whether `url` asks for MQTT over TLS (`mqtts://host:port`)."""
    return "://" in url and urlparse(url).scheme in TLS_SCHEMES
