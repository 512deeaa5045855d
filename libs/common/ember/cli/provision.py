"""`ember provision`: the CA, certificates and identities under `$EMBER_HOME/pki` (idempotent).

ember provision --nodes 3 --operator alice --viewer bob     # add what is missing
ember provision --rotate node-2                             # new password (or certificate)
ember provision --revoke node-2                             # then SIGHUP the broker
ember provision node node-4 --export node-4.tar.gz          # a node's bundle for its host
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ember.cli.common import console, fail, settings, table

app = typer.Typer(help="Identities, certificates, the broker's password file and ACL (docs/security.md).")

RELOAD_HINT = "the broker applies changed passwords and ACL on SIGHUP: kill -HUP <mosquitto pid>"


@app.callback(invoke_without_command=True)
def provision(
    ctx: typer.Context,
    node: list[str] = typer.Option(
        [], "--node", help="Provision this node (repeatable): identity, device fleet, mldata certificate."
    ),
    nodes: int = typer.Option(0, "--nodes", min=0, help="Provision node-1 .. node-N."),
    operator: list[str] = typer.Option([], "--operator", help="A CLI user who may submit and cancel jobs (repeatable)."),
    viewer: list[str] = typer.Option([], "--viewer", help="A read-only CLI user (repeatable)."),
    broker_host: list[str] = typer.Option([], "--broker-host", help="A name or address clients reach the broker at (TLS)."),
    registry_host: list[str] = typer.Option([], "--registry-host", help="A name or address of the image registry (TLS)."),
    actors_as_node: bool | None = typer.Option(
        None,
        "--actors-as-node/--per-job-actors",
        help="Whether a node's identity may use every job's actor topics (actors without job credentials). Remembered.",
    ),
    rotate: str = typer.Option(
        "", "--rotate", metavar="PRINCIPAL", help="New password (or key and certificate) for one principal."
    ),
    revoke: str = typer.Option("", "--revoke", metavar="PRINCIPAL", help="Remove one principal (a node: also its device fleet)."),
) -> None:
    """Create what is missing under $EMBER_HOME/pki; keep what exists. Prints every principal."""
    if ctx.invoked_subcommand:
        return
    from ember.security import provision as p
    from ember.security.identities import UserRole

    home = settings().home
    users = {name: UserRole.operator for name in operator} | {name: UserRole.viewer for name in viewer}
    try:
        if rotate:
            report = p.rotate(home, rotate)
        elif revoke:
            report = p.revoke(home, revoke)
        else:
            names = [*node, *(f"node-{i}" for i in range(1, nodes + 1))]
            report = p.provision(
                home,
                nodes=names,
                users=users,
                broker_hosts=broker_host,
                registry_hosts=registry_host,
                actors_as_node=actors_as_node,
            )
    except (KeyError, ValueError, RuntimeError) as exc:
        fail(str(exc.args[0]), 2)
    _print(home)
    for verb, names in (("created", report.created), ("rotated", report.rotated), ("revoked", report.revoked)):
        if names:
            console.print(f"{verb}: {', '.join(names)}")
    if report.rotated or report.revoked:
        console.print(RELOAD_HINT)


def _print(home: Path) -> None:
    from ember.security.provision import Pki

    pki = Pki(home)
    t = table("PRINCIPAL", "KIND", "ROLE / NODE / JOB")
    for identity in pki.store.all():
        detail = identity.role or identity.node
        if identity.job:
            detail = f"{identity.role} of job {identity.job}"
        t.add_row(identity.name, identity.kind.value, escape(detail))
    console.print(t)
    console.print(f"bundles: {pki.store.folder}/<principal>.json (pass one to a process as EMBER_IDENTITY)")
    console.print(f"broker: password file {pki.password_file}, ACL {pki.acl_file}, CA {pki.ca.cert}")


@app.command("node")
def node_bundle(
    name: str = typer.Argument(..., help="Node id, e.g. node-4 (provisioned when missing)."),
    export: Path = typer.Option(..., "--export", help="Folder (or .tar.gz file) to write the node's bundle to."),
) -> None:
    """Write one node's bundle (identities, CA, mldata certificate, node.env) to copy to its host."""
    from ember.security import provision as p

    home = settings().home
    try:
        report = p.provision(home, nodes=[name])
        out = p.export_node(home, name, export)
    except (KeyError, ValueError, RuntimeError) as exc:
        fail(str(exc.args[0]), 2)
    if report.created:
        console.print(f"created: {', '.join(report.created)} ({RELOAD_HINT})")
    console.print(f"wrote {out}: copy it to {name}'s host and start its flamelet and mldata with the variables in node.env")
