"""How one client connects: username, password and TLS, from settings or an identity bundle.

    security = MqttSecurity.from_env()            # EMBER_IDENTITY or EMBER_MQTT_USERNAME/...
    aiomqtt.Client(host, port, **security.client_options(url))

TLS is on when the URL says `mqtts://`. The broker is verified with the CA from the bundle (or
`EMBER_MQTT_CA_FILE`), else with the system's trust store; hostnames are always checked. A client
certificate is sent when `EMBER_MQTT_CERT_FILE` and `EMBER_MQTT_KEY_FILE` are set. This module
uses only the standard library (`ssl`): every node imports it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.settings import Settings, mqtt_url_uses_tls


@dataclass(frozen=True)
class MqttSecurity:
    """The credentials and trust of one MQTT client; empty means anonymous, system trust."""

    username: str = ""
    password: str = field(default="", repr=False)
    ca_pem: str = field(default="", repr=False)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_identity(cls, path: str | Path) -> MqttSecurity:
        """From an identity bundle written by `ember provision` (`pki/identities/<name>.json`)."""
        bundle = json.loads(Path(path).expanduser().read_text())
        return cls(username=bundle["name"], password=bundle["password"], ca_pem=bundle.get("ca_pem", ""))

    @classmethod
    def from_settings(cls, settings: Settings) -> MqttSecurity:
        """Explicit `mqtt_*` settings win over the bundle named by `identity`."""
        base = cls.from_identity(settings.identity) if settings.identity else cls()
        return cls(
            username=settings.mqtt_username or base.username,
            password=settings.mqtt_password or base.password,
            ca_pem=base.ca_pem,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MqttSecurity:
        return cls.from_settings(Settings.from_env(env))

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None, cadata=self.ca_pem or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context

    def client_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for `aiomqtt.Client` connecting to `url`."""
        options: dict[str, Any] = {}
        if self.username:
            options["username"] = self.username
            options["password"] = self.password or None
        if mqtt_url_uses_tls(url):
            options["tls_context"] = self.tls_context()
        return options
