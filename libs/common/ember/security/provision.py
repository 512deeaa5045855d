"""`ember provision`: the CA, certificates, identities, Mosquitto's password file and ACL, under
`EMBER_HOME/pki` (folders 0700, files 0600). Every call is idempotent: what exists is kept, what
is missing is added, and the password file and ACL are rewritten from the identities.

    pki/ca.crt, ca.key                     the CA (its key never leaves this folder)
    pki/broker.crt|key, registry.crt|key   server certificates
    pki/mldata-<node>.crt|key              one per node
    pki/identities/<principal>.json        one bundle per principal (ember.security.identities)
    pki/mosquitto.passwd, mosquitto.acl    for the broker (ember.security.broker)

The broker re-reads the password file and the ACL on SIGHUP (`reload_broker`): after a rotation,
a revocation or a job credential, signal it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tarfile
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.events import Role
from ember.security import pki
from ember.security.acl import Policy
from ember.security.identities import (
    SERVICES,
    Identity,
    IdentityStore,
    Kind,
    UserRole,
    actor_principal,
    check_name,
    device_fleet,
    new_password,
    sync_password_file,
)

DEFAULT_ROOT = "ember/v1"


@dataclass(frozen=True)
class Pki:
    """The files of one Ember home's PKI."""

    home: Path

    @property
    def folder(self) -> Path:
        return self.home / "pki"

    @property
    def store(self) -> IdentityStore:
        return IdentityStore(self.folder / "identities")

    @property
    def ca(self) -> pki.CertPaths:
        return pki.CertPaths(self.folder / "ca.crt", self.folder / "ca.key")

    def server(self, name: str) -> pki.CertPaths:
        """`broker`, `registry` or `mldata-<node>`."""
        return pki.CertPaths(self.folder / f"{name}.crt", self.folder / f"{name}.key")

    @property
    def password_file(self) -> Path:
        return self.folder / "mosquitto.passwd"

    @property
    def acl_file(self) -> Path:
        return self.folder / "mosquitto.acl"

    @property
    def settings_file(self) -> Path:
        return self.folder / "provision.json"

    def settings(self) -> dict[str, Any]:
        """What `provision` was told to remember: `topic_root` and `actors_as_node`."""
        try:
            return dict(json.loads(self.settings_file.read_text()))
        except (OSError, ValueError):
            return {}

    def policy(self) -> Policy:
        """The ACL policy with the remembered settings."""
        settings = self.settings()
        return Policy(root=settings.get("topic_root", DEFAULT_ROOT), actors_as_node=bool(settings.get("actors_as_node", False)))

    def bundle(self, name: str) -> Path:
        return self.store.path(name)


@dataclass
class Report:
    """What one call changed."""

    created: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _locked(p: Pki) -> Iterator[None]:
    """One writer at a time (an operator's `ember provision` and a job credential being issued)."""
    p.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    p.folder.chmod(0o700)
    fd = os.open(p.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure(p: Pki, report: Report, name: str, kind: Kind, **attrs: str) -> Identity:
    """The identity `name`, created with a new password when missing; its attributes (role, CA)
    updated when they changed, its password kept."""
    ca_pem = p.ca.cert.read_text()
    existing = p.store.get(name)
    if existing is not None and existing.kind != kind:
        raise ValueError(f"{name!r} already names a {existing.kind} principal")
    if existing is None:
        report.created.append(name)
        return p.store.put(Identity(name=name, kind=kind, password=new_password(), ca_pem=ca_pem, **attrs))
    wanted = existing.model_copy(update={"ca_pem": ca_pem, **attrs})
    return p.store.put(wanted) if wanted != existing else existing


def _write_broker_files(p: Pki, changed: Collection[str] = ()) -> None:
    identities = p.store.all()
    sync_password_file(p.password_file, identities, changed=changed)
    pki.write_private(p.acl_file, p.policy().render(identities).encode())


def provision(
    home: Path,
    *,
    nodes: Iterable[str] = (),
    users: Mapping[str, UserRole] | None = None,
    broker_hosts: Iterable[str] = (),
    registry_hosts: Iterable[str] = (),
    topic_root: str | None = None,
    actors_as_node: bool | None = None,
) -> Report:
    """Add whatever is missing: CA, broker and registry certificates, the control-plane services,
    each node in `nodes` (identity, device fleet, mldata certificate), each user with its role.

    `topic_root` and `actors_as_node` (`ember.security.acl.Policy`) are remembered; None keeps the
    remembered value."""
    p = Pki(home)
    report = Report()
    nodes = [check_name(node, "node") for node in nodes]
    users = {check_name(user, "user"): UserRole(role) for user, role in (users or {}).items()}
    with _locked(p):
        remembered = {"topic_root": DEFAULT_ROOT, "actors_as_node": False, **p.settings()}
        changes = {"topic_root": topic_root, "actors_as_node": actors_as_node}
        remembered.update({key: value for key, value in changes.items() if value is not None})
        pki.write_private(p.settings_file, json.dumps(remembered).encode())
        if not p.ca.cert.exists():
            report.created.append("ca")
        pki.ensure_ca(p.folder)
        for server, hosts in (("broker", broker_hosts), ("registry", registry_hosts)):
            _issue(p, report, server, [*pki.DEFAULT_HOSTS, *hosts])
        for service in SERVICES:
            _ensure(p, report, service, Kind.service)
        for node in nodes:
            _ensure(p, report, node, Kind.node, node=node)
            _ensure(p, report, device_fleet(node), Kind.devices, node=node)
            _issue(p, report, f"mldata-{node}", [*pki.DEFAULT_HOSTS, node])
        for user, role in users.items():
            _ensure(p, report, user, Kind.user, role=role.value)
        _write_broker_files(p)
    return report


def _issue(p: Pki, report: Report, name: str, hosts: list[str], *, replace: bool = False) -> None:
    paths = p.server(name)
    if replace:
        report.rotated.append(name)
    elif not paths.cert.exists():
        report.created.append(name)
    elif not set(hosts) <= set(pki.hosts_of(paths.cert)):  # a new host name: reissue
        hosts, replace = [*pki.hosts_of(paths.cert), *hosts], True
        report.rotated.append(name)
    pki.issue(p.ca, paths, name, hosts, replace=replace)


def rotate(home: Path, name: str) -> Report:
    """A new password for principal `name`, or a new key and certificate for a server
    (`broker`, `registry`, `mldata-<node>`), valid for the same hosts."""
    p = Pki(home)
    report = Report()
    with _locked(p):
        identity = p.store.get(name)
        if identity is not None:
            p.store.put(identity.model_copy(update={"password": new_password()}))
            report.rotated.append(name)
            _write_broker_files(p, changed={name})
        elif p.server(name).cert.exists():
            _issue(p, report, name, pki.hosts_of(p.server(name).cert), replace=True)
        else:
            raise KeyError(f"no principal or certificate named {name!r}")
    return report


def revoke(home: Path, name: str) -> Report:
    """Remove principal `name` (a node: also its device fleet and its mldata certificate) from the
    identities, the password file and the ACL. The broker applies it on SIGHUP."""
    p = Pki(home)
    report = Report()
    with _locked(p):
        identity = p.store.get(name)
        if identity is None:
            raise KeyError(f"no principal named {name!r}")
        names = [name, device_fleet(name)] if identity.kind == Kind.node else [name]
        for each in names:
            if p.store.remove(each):
                report.revoked.append(each)
        if identity.kind == Kind.node:
            for path in (p.server(f"mldata-{name}").cert, p.server(f"mldata-{name}").key):
                path.unlink(missing_ok=True)
        _write_broker_files(p)
    return report


def issue_job_credential(home: Path, job: str, actor: str, role: Role | str) -> Identity:
    """The credential of one actor of one job (`job-<job>-<actor>`), scoped to `jobs/<job>/...`
    by the ACL: issue it at placement, hand it to the actor, `revoke_job_credential` at the end."""
    p = Pki(home)
    report = Report()
    with _locked(p):
        identity = _ensure(p, report, actor_principal(job, actor), Kind.actor, job=job, actor=actor, role=Role(role).value)
        _write_broker_files(p)
    return identity


def revoke_job_credential(home: Path, job: str, actor: str) -> bool:
    try:
        revoke(home, actor_principal(job, actor))
    except KeyError:
        return False
    return True


def reload_broker(pid: int) -> None:
    """Make Mosquitto re-read its password file and ACL: it disconnects a connected client whose
    credentials no longer hold; the others are allowed only what the new ACL grants them."""
    os.kill(pid, signal.SIGHUP)


def export_node(home: Path, node: str, dest: Path) -> Path:
    """Write what node `node`'s host needs into folder `dest` (or a `.tar.gz` of it): the node's
    and its device fleet's bundles, the CA certificate, mldata's certificate and key, and `node.env`.
    """
    p = Pki(home)
    if p.store.get(node) is None:
        raise KeyError(f"node {node!r} is not provisioned: run `ember provision --node {node}`")
    packed = dest.name.endswith((".tar.gz", ".tgz"))
    folder = Path(tempfile.mkdtemp(prefix="ember-export-")) if packed else dest
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        files = {
            "identity.json": p.bundle(node),
            "devices.json": p.bundle(device_fleet(node)),
            "ca.crt": p.ca.cert,
            "mldata.crt": p.server(f"mldata-{node}").cert,
            "mldata.key": p.server(f"mldata-{node}").key,
        }
        for target, source in files.items():
            pki.write_private(folder / target, source.read_bytes())
        env = [
            f"# Ember node {node}: paths are relative to this folder; make them absolute where you install it.",
            f"EMBER_NODE_ID={node}",
            "EMBER_IDENTITY=identity.json",
            "",
        ]
        pki.write_private(folder / "node.env", "\n".join(env).encode())
        if packed:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                tar.add(folder, arcname=node)
    finally:
        if packed:
            shutil.rmtree(folder, ignore_errors=True)
    return dest
