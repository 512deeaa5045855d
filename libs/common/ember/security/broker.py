"""A secured Mosquitto: no anonymous clients, the provisioned password file and ACL, a TLS listener.

    secured = secure_broker(home, plain_config, tls_port=8883, nodes=["node-1"])
    conf.write_text(secured.config)
    env["EMBER_IDENTITY"] = str(secured.identities["manager"])     # per service / node

`plain_config` is any Mosquitto config text (listeners, persistence, limits); the security lines
are added to it and any `allow_anonymous`, `password_file` or `acl_file` line in it is dropped.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ember.security.identities import UserRole
from ember.security.provision import Pki, provision

OVERRIDDEN = ("allow_anonymous", "password_file", "acl_file", "per_listener_settings")


def secure_config(plain_config: str, home: Path, *, tls_port: int | None = None, tls_host: str = "127.0.0.1") -> str:
    """`plain_config` with authentication, the ACL and (when `tls_port`) a TLS listener on
    `tls_host:tls_port` with the provisioned broker certificate. The files must exist
    (`provision`)."""
    p = Pki(home)
    lines = [line for line in plain_config.splitlines() if line.split(" ", 1)[0] not in OVERRIDDEN]
    # Global lines go first: whatever follows a `listener` line configures that listener.
    head = ["# security (ember.security.broker)", "per_listener_settings false", "allow_anonymous false"]
    if not any(line.startswith("user ") for line in lines):
        # as root, Mosquitto would run as `mosquitto` and could not read the 0600 files below
        head.append(f"user {getpass.getuser()}")
    head += [f"password_file {p.password_file}", f"acl_file {p.acl_file}"]
    tls: list[str] = []
    if tls_port is not None:
        broker = p.server("broker")
        tls = [
            f"listener {tls_port} {tls_host}",
            f"cafile {p.ca.cert}",
            f"certfile {broker.cert}",
            f"keyfile {broker.key}",
            "tls_version tlsv1.2",
        ]
    return "\n".join([*head, *lines, *tls]) + "\n"


@dataclass(frozen=True)
class SecuredBroker:
    config: str
    """The Mosquitto config text to run the broker with."""
    identities: dict[str, Path]
    """Bundle path per principal (`manager`, `builder`, `notifier`, each node, each device fleet,
    each user): pass it to that process as `EMBER_IDENTITY`."""
    ca_file: Path


def secure_broker(
    home: Path,
    plain_config: str,
    *,
    tls_port: int | None = None,
    tls_host: str = "127.0.0.1",
    nodes: Iterable[str] = (),
    users: Mapping[str, UserRole] | None = None,
    topic_root: str | None = None,
    actors_as_node: bool | None = None,
) -> SecuredBroker:
    """Provision what is missing (idempotent) and return the secured config and the identities.

    `actors_as_node=True` lets a node's identity use every job's actor topics: for actors that
    inherit their flamelet's identity, until per-job credentials are handed to them."""
    provision(home, nodes=nodes, users=users, broker_hosts=[tls_host], topic_root=topic_root, actors_as_node=actors_as_node)
    p = Pki(home)
    identities = {identity.name: p.bundle(identity.name) for identity in p.store.all()}
    return SecuredBroker(secure_config(plain_config, home, tls_port=tls_port, tls_host=tls_host), identities, p.ca.cert)
