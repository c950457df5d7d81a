"""`iotgate ca`: the CAs whose certificates the gateway trusts."""

from __future__ import annotations

from pathlib import Path

import click

from certs.authority import cert_pem, certificate_id, is_ca, issued_by, load_certificates
from gateway.registry import CA, NotFound
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when
from devices.provisioning import ProvisioningError


@click.group()
def ca() -> None:
    """CA certificates: list, register an external CA, activate, deactivate."""


def ca_json(row: CA) -> dict:
    return {"caCertificateId": row.ca_id, "status": row.status, "subject": row.subject, "own": row.is_own,
            "autoRegistration": row.auto_registration, "createdAt": when(row.created_at)}


@ca.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List registered CAs."""
    rows = app.registry().list_cas()
    if as_json:
        emit_json([ca_json(r) for r in rows])
        return
    emit_table(f"{len(rows)} CA(s)", ["CA id", "status", "subject", "own"],
               ((r.ca_id, r.status, r.subject, "yes" if r.is_own else "no") for r in rows))


@ca.command("register")
@click.argument("ca_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--status", type=click.Choice(["ACTIVE", "INACTIVE"]), default="ACTIVE", show_default=True)
@pass_app
def register(app: AppContext, ca_file: Path, status: str) -> None:
    """Register an external CA certificate (PEM), so certificates it issued can be registered and connect."""
    try:
        data = ca_file.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(f"{ca_file}: file not found") from None
    cert = load_certificates(data, source=str(ca_file))[0]
    if not is_ca(cert):
        raise ProvisioningError(f"{ca_file}: not a CA certificate (basicConstraints CA:TRUE is missing)")
    if cert.issuer == cert.subject and not issued_by(cert, cert):
        raise ProvisioningError(f"{ca_file}: self-signed CA certificate whose signature does not verify")
    registry = app.registry()
    cid = certificate_id(cert)
    try:
        registry.get_ca(cid)
    except NotFound:
        pass
    else:
        raise ProvisioningError(f"{ca_file}: CA {cid} is already registered")
    registry.register_ca(cid, cert_pem(cert).decode(), cert.subject.rfc4514_string(), status=status)
    console.print(f"CA {cid} registered ({status}): {cert.subject.rfc4514_string()}")


def _set_status(app: AppContext, ca_id: str, status: str) -> None:
    row = app.registry().set_ca_status(ca_id, status)
    console.print(f"CA {row.ca_id} is now {row.status}")


@ca.command("activate")
@click.argument("ca_id")
@pass_app
def activate(app: AppContext, ca_id: str) -> None:
    """Set a CA ACTIVE: certificates it issued may connect again."""
    _set_status(app, ca_id, "ACTIVE")


@ca.command("deactivate")
@click.argument("ca_id")
@pass_app
def deactivate(app: AppContext, ca_id: str) -> None:
    """Set a CA INACTIVE: no certificate it issued can connect."""
    _set_status(app, ca_id, "INACTIVE")
