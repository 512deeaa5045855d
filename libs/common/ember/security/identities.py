"""Identities: one per principal, stored as a bundle (`pki/identities/<name>.json`, 0600).

A principal is a control-plane service (`manager`, `builder`, `notifier`), a node (`node-1`: its
flamelet and its mldata), a node's device fleet (`devices-node-1`), a CLI user with a role
(`operator` or `viewer`), or one actor of one job (`job-<job>-<actor>`, issued at placement).
Its MQTT username is its name; its password is random. The bundle also carries the CA certificate,
so a copied bundle is all a client needs to connect over `mqtts://` (`ember.security.mqtt`).
"""

from __future__ import annotations

import re
import secrets
import shutil
import string
import subprocess
from collections.abc import Collection
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.security.pki import write_private

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""A node, job, actor or user name: at most 63 characters (a DNS label: node names go into certificates)."""
PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SERVICES = ("manager", "builder", "notifier")
PASSWORD_ALPHABET = string.ascii_letters + string.digits


class Kind(StrEnum):
    service = "service"
    node = "node"
    devices = "devices"
    user = "user"
    actor = "actor"


class UserRole(StrEnum):
    operator = "operator"
    """May read jobs, nodes and events, submit and cancel jobs."""
    viewer = "viewer"
    """May read jobs, nodes and events; every request that changes something is refused."""


class Identity(BaseModel):
    """A principal's bundle: who it is, what it is for, and how it connects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    password: str = Field(repr=False)
    node: str = ""
    """The node a `node` or `devices` principal belongs to."""
    role: str = ""
    """`operator`/`viewer` for a user, `aggregator`/`learner` for an actor."""
    job: str = ""
    actor: str = ""
    ca_pem: str = Field(default="", repr=False)
    """The CA certificate a client verifies the broker with."""

    @field_validator("node", "job", "actor")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not NAME.match(value):
            raise ValueError(f"{value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("name")
    @classmethod
    def _principal(cls, value: str) -> str:
        if not PRINCIPAL.match(value):
            raise ValueError(f"invalid principal name {value!r}")
        return value

    @property
    def username(self) -> str:
        return self.name


RESERVED_PREFIXES = ("job-", "devices-")


def check_name(name: str, what: str) -> str:
    """`name` if it may name a node or a user: a short name, not a service's, not one of the
    prefixes of derived principals (device fleets, job actors)."""
    if not NAME.match(name):
        raise ValueError(f"{what} {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name in SERVICES or name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"{what} {name!r}: reserved (services are {', '.join(SERVICES)}; {' and '.join(RESERVED_PREFIXES)} are derived names)"
        )
    return name


def new_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(32))


def device_fleet(node: str) -> str:
    return f"devices-{node}"


def actor_principal(job: str, actor: str) -> str:
    return f"job-{job}-{actor}"


class IdentityStore:
    """The bundles in `folder` (one JSON file each)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        if not PRINCIPAL.match(name):
            raise ValueError(f"invalid principal name {name!r}")
        return self.folder / f"{name}.json"

    def get(self, name: str) -> Identity | None:
        try:
            return Identity.model_validate_json(self.path(name).read_text())
        except FileNotFoundError:
            return None

    def put(self, identity: Identity) -> Identity:
        write_private(self.path(identity.name), (identity.model_dump_json(indent=2) + "\n").encode())
        return identity

    def remove(self, name: str) -> bool:
        try:
            self.path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def all(self) -> list[Identity]:
        if not self.folder.is_dir():
            return []
        return [Identity.model_validate_json(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


def mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None
    )
    if not found:
        raise RuntimeError("mosquitto_passwd is not installed: 'apt-get install mosquitto' provides it")
    return found


def password_file_users(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if ":" in line}


def sync_password_file(path: Path, identities: list[Identity], *, changed: Collection[str] = ()) -> None:
    """Make Mosquitto's password file hold exactly `identities` (hashed by `mosquitto_passwd`).

    A user already in the file keeps its hash unless its name is in `changed` (a rotation); users
    without an identity are deleted."""
    if not path.exists():
        write_private(path, b"")
    present = password_file_users(path)
    wanted = {i.name: i for i in identities}
    binary = mosquitto_passwd()
    for name in sorted(present - wanted.keys()):
        subprocess.run([binary, "-D", str(path), name], check=True, capture_output=True)
    for name, identity in sorted(wanted.items()):
        if name not in present or name in changed:
            subprocess.run([binary, "-b", str(path), name, identity.password], check=True, capture_output=True)
    path.chmod(0o600)
