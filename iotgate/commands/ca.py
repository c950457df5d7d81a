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
    emit_table(f"{len(rows)} CA(s)", ["CA id", "status", "subject", "own", "auto-registration"],
               ((r.ca_id, r.status, r.subject, "yes" if r.is_own else "no", "yes" if r.auto_registration else "no")
                for r in rows))


def _registration_options(command):
    for option in reversed([
        click.option("--template", "template", metavar="NAME",
                     help="JITP: provision unknown certificates with this JITP template (`iotgate template create "
                          "NAME FILE --type JITP`)."),
        click.option("--template-body", "template_body", type=click.Path(dir_okay=False, path_type=Path),
                     metavar="FILE", help="JITP: provision unknown certificates with this template (JSON file)."),
        click.option("--role-arn", help="Kept for `iotgate aws sync` (AWS's registrationConfig roleArn)."),
    ]):
        command = option(command)
    return command


def _template_body(template_body: Path | None) -> str | None:
    if template_body is None:
        return None
    from gateway.provisioning.template import TemplateError, parse

    try:
        text = template_body.read_text()
    except FileNotFoundError:
        raise ProvisioningError(f"{template_body}: file not found") from None
    try:
        parse(text)
    except TemplateError as exc:
        raise ProvisioningError(f"{template_body}: {exc}") from None
    return text


def _mode(auto: bool, template: str | None, body: str | None) -> str:
    if not auto:
        return "no auto-registration"
    return f"auto-registration, JITP with template {template}" if template else \
        "auto-registration, JITP with its template body" if body else "auto-registration (JITR)"


@ca.command("register")
@click.argument("ca_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--status", type=click.Choice(["ACTIVE", "INACTIVE"]), default="ACTIVE", show_default=True)
@click.option("--auto-registration", is_flag=True,
              help="Register unknown device certificates it issued when they first connect (JITR: "
                   "PENDING_ACTIVATION; JITP with --template or --template-body).")
@_registration_options
@pass_app
def register(app: AppContext, ca_file: Path, status: str, auto_registration: bool, template: str | None,
             template_body: Path | None, role_arn: str | None) -> None:
    """Register an external CA certificate (PEM), so certificates it issued can be registered and connect."""
    if (template or template_body) and not auto_registration:
        raise click.UsageError("--template and --template-body need --auto-registration")
    body = _template_body(template_body)
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
    if template is not None:
        registry.get_provisioning_template(template)  # refused before anything is written
    registry.register_ca(cid, cert_pem(cert).decode(), cert.subject.rfc4514_string(), status=status)
    if auto_registration:
        registry.set_ca_registration(cid, auto_registration=True, template_body_text=body, template=template,
                                     role_arn=role_arn)
    console.print(f"CA {cid} registered ({status}, {_mode(auto_registration, template, body)}): "
                  f"{cert.subject.rfc4514_string()}", soft_wrap=True)


@ca.command("update")
@click.argument("ca_id")
@click.option("--auto-registration/--no-auto-registration", required=True,
              help="Turn auto-registration of unknown device certificates on or off (AWS's autoRegistrationStatus).")
@_registration_options
@pass_app
def update(app: AppContext, ca_id: str, auto_registration: bool, template: str | None, template_body: Path | None,
           role_arn: str | None) -> None:
    """Set a CA's auto-registration and registration config (JITR without a template, JITP with one)."""
    if (template or template_body) and not auto_registration:
        raise click.UsageError("--template and --template-body need --auto-registration")
    body = _template_body(template_body)
    registry = app.registry()
    row = registry.get_ca(ca_id)
    registry.set_ca_registration(row.ca_id, auto_registration=auto_registration, template_body_text=body,
                                 template=template, role_arn=role_arn)
    console.print(f"CA {row.ca_id}: {_mode(auto_registration, template, body)}")


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
