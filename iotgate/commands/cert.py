"""`iotgate cert`: device certificates, their statuses, revocation, rotation and expiry."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from certs.authority import cert_pem, certificate_id, common_name, issued_by, load_certificates, serial_hex
from certs.errors import PKIError
from certs.keys import KeyType
from devices.identity import DeviceFiles, make_key_and_csr, rotate_device_files
from gateway.registry import Certificate, NotFound
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when
from devices.provisioning import ProvisioningError, ensure_policy, register_certificate, rewrite_crl, sign_csr

STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "PENDING_ACTIVATION")


@click.group()
def cert() -> None:
    """Device certificates: issue from a CSR, list, activate, deactivate, revoke, rotate, register."""


def cert_json(c: Certificate, things: list[str] | None = None, policies: list[str] | None = None) -> dict:
    data = {
        "certificateId": c.certificate_id, "status": c.status, "subject": c.subject_cn,
        "serialNumber": c.serial_number, "caCertificateId": c.ca_id, "notBefore": when(c.not_before),
        "notAfter": when(c.not_after), "createdAt": when(c.created_at), "revokedAt": when(c.revoked_at),
    }
    if things is not None:
        data["things"] = things
    if policies is not None:
        data["policies"] = policies
    return data


def _print_list(rows: list[Certificate], as_json: bool, title: str) -> None:
    if as_json:
        emit_json([cert_json(c) for c in rows])
        return
    emit_table(title, ["certificate id", "status", "CN", "not after"],
               ((c.certificate_id, c.status, c.subject_cn, when(c.not_after)) for c in rows))


@cert.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only certificates with this status.")
@click.option("--thing", help="Only the certificates attached to this thing.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def list_(app: AppContext, status: str | None, thing: str | None, limit: int | None, as_json: bool) -> None:
    """List certificates."""
    registry = app.registry()
    if thing:
        registry.get_thing(thing)
    rows = registry.list_certificates(status=status, thing=thing, limit=limit)
    _print_list(rows, as_json, f"{len(rows)} certificate(s)")


@cert.command("show")
@click.argument("certificate_id")
@click.option("--pem", is_flag=True, help="Print the certificate PEM only.")
@json_option
@pass_app
def show(app: AppContext, certificate_id: str, pem: bool, as_json: bool) -> None:
    """Show one certificate (a unique id prefix of 8+ characters is enough)."""
    registry = app.registry()
    c = registry.get_certificate(certificate_id)
    if pem:
        sys.stdout.write(c.pem)
        return
    things = registry.list_principal_things(c.certificate_id)
    policies = [p.name for p in registry.list_attached_policies(c.certificate_id)]
    data = cert_json(c, things, policies)
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        console.print(f"{key:<18} {', '.join(value) if isinstance(value, list) else value}")


def _set_status(app: AppContext, certificate_id: str, status: str) -> None:
    c = app.registry().set_certificate_status(certificate_id, status)
    console.print(f"{c.certificate_id} is now {c.status}")


@cert.command("activate")
@click.argument("certificate_id")
@pass_app
def activate(app: AppContext, certificate_id: str) -> None:
    """Set a certificate ACTIVE (a REVOKED certificate can never be activated again)."""
    _set_status(app, certificate_id, "ACTIVE")


@cert.command("deactivate")
@click.argument("certificate_id")
@pass_app
def deactivate(app: AppContext, certificate_id: str) -> None:
    """Set a certificate INACTIVE: it can no longer connect; live sessions are closed by the gateway."""
    _set_status(app, certificate_id, "INACTIVE")


@cert.command("revoke")
@click.argument("certificate_id", required=False)
@click.option("--thing", help="Revoke every certificate of this thing.")
@pass_app
def revoke(app: AppContext, certificate_id: str | None, thing: str | None) -> None:
    """Revoke a certificate (final) and rewrite crl.pem."""
    if bool(certificate_id) == bool(thing):
        raise click.UsageError("give either a CERTIFICATE_ID or --thing NAME")
    registry = app.registry()
    if thing:
        targets = [c for c in registry.list_thing_principals(thing) if c.status != "REVOKED"]
        if not targets:
            raise ProvisioningError(f"thing {thing!r} has no certificate left to revoke")
    else:
        targets = [registry.get_certificate(certificate_id)]
    # The registry first: it is what the gateway enforces, within a second. The CRL (for brokers and tools
    # that read one) needs the issuing CA's key, which may be locked behind a passphrase.
    for c in targets:
        registry.set_certificate_status(c.certificate_id, "REVOKED")
        console.print(f"{c.certificate_id} REVOKED")
    if app.store.exists():
        try:
            count = rewrite_crl(app.store, registry, app.issuer(), app.clock())
        except PKIError as exc:
            raise PKIError(f"{len(targets)} certificate(s) REVOKED in the registry (the gateway refuses them), but "
                           f"crl.pem was not rewritten: {exc}; then run `iotgate pki crl`") from None
        console.print(f"{app.store.paths.crl} rewritten ({count} revoked)")


@cert.command("expiring")
@click.option("--days", type=click.IntRange(min=0), default=30, show_default=True)
@json_option
@pass_app
def expiring(app: AppContext, days: int, as_json: bool) -> None:
    """Certificates that are not REVOKED and expire within DAYS (as Device Defender's 30-day check)."""
    before = app.clock() + dt.timedelta(days=days)
    rows = [c for c in app.registry().list_certificates(expiring_before=before) if c.status != "REVOKED"]
    _print_list(rows, as_json, f"{len(rows)} certificate(s) expiring before {when(before)}")


@cert.command("sign-csr")
@click.argument("csr_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--thing", required=True, help="Thing the certificate is for; the CSR's CN must equal it.")
@click.option("--policy", "policies", multiple=True, metavar="NAME|FILE",
              help="Policy to attach (repeatable); default: the built-in least-privilege device policy.")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the chain PEM here.")
@pass_app
def sign_csr_cmd(app: AppContext, csr_file: Path, thing: str, policies: tuple[str, ...], days: int,
                 out: Path | None) -> None:
    """Issue a device certificate from a CSR made elsewhere; register it for the thing."""
    try:
        data = csr_file.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(f"{csr_file}: file not found") from None
    cert_id, pem = sign_csr(app.registry(), app.issuer(), data, thing, policy_specs=policies, now=app.clock(),
                            days=days, source=str(csr_file))
    if out:
        out.write_bytes(pem)
        console.print(f"{cert_id} issued for {thing}, written to {out}", soft_wrap=True)
    else:
        sys.stdout.write(pem.decode())
        click.echo(f"{cert_id} issued for {thing}", err=True)


@cert.command("rotate")
@click.option("--thing", required=True, help="Thing whose device gets a new key and certificate.")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default=KeyType.EC_P256.value,
              show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@pass_app
def rotate(app: AppContext, thing: str, key_type: str, days: int) -> None:
    """New key and CSR on the device side, new certificate with the same policies; both stay ACTIVE.

    Deactivate the old certificate once the device connects with the new one.
    """
    registry = app.registry()
    registry.get_thing(thing)
    current = [c for c in registry.list_thing_principals(thing) if c.status == "ACTIVE"]
    policies = sorted({p.name for c in current for p in registry.list_attached_policies(c.certificate_id)})
    device_dir = app.store.paths.devices / thing
    if not DeviceFiles(device_dir).complete():
        raise ProvisioningError(f"{device_dir}: no device files for {thing!r}; rotation needs the device "
                                "directory made by `iotgate fleet provision`")
    issuer = app.issuer()
    key, csr = make_key_and_csr(thing, key_type)
    new = issuer.sign_device_csr(csr, thing, now=app.clock(), days=days, source=f"CSR of {thing}")
    pem = issuer.pem_with_chain(new)
    new_id = register_certificate(registry, thing, new, pem, issuer.ca_id, policies or
                                  [ensure_policy(registry, None)])
    rotate_device_files(device_dir, key, pem)
    console.print(f"{thing}: new certificate {new_id} ACTIVE; files in {device_dir}")
    for c in current:
        console.print(f"  previous {c.certificate_id} still ACTIVE: "
                      f"`iotgate cert deactivate {c.certificate_id[:16]}` once the device has switched")


@cert.command("register")
@click.argument("cert_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--thing", help="Attach the certificate to this thing (created if missing).")
@click.option("--status", type=click.Choice(["ACTIVE", "INACTIVE"]), default="ACTIVE", show_default=True)
@click.option("--policy", "policies", multiple=True, metavar="NAME|FILE", help="Policy to attach (repeatable).")
@pass_app
def register(app: AppContext, cert_file: Path, thing: str | None, status: str, policies: tuple[str, ...]) -> None:
    """Register a device certificate issued by a registered CA (e.g. one AWS IoT or another PKI issued)."""
    try:
        data = cert_file.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(f"{cert_file}: file not found") from None
    leaf = load_certificates(data, source=str(cert_file))[0]
    registry = app.registry()
    issuer_id = None
    for ca_row in registry.list_cas():
        ca_cert = load_certificates(ca_row.pem.encode(), source=f"CA {ca_row.ca_id}")[0]
        if issued_by(leaf, ca_cert):
            issuer_id = ca_row.ca_id
            break
    if issuer_id is None:
        raise ProvisioningError(f"{cert_file}: not issued by any registered CA; register its CA first with "
                                "`iotgate ca register CA.pem`")
    cid = certificate_id(leaf)
    try:
        registry.get_certificate(cid)
    except NotFound:
        pass
    else:
        raise ProvisioningError(f"{cert_file}: certificate {cid} is already registered")
    names = [ensure_policy(registry, p) for p in policies]
    pem = data if b"-----BEGIN" in data else cert_pem(leaf)
    if thing:
        register_certificate(registry, thing, leaf, pem, issuer_id, names, status=status)
    else:
        registry.register_certificate(cid, pem.decode(), serial_hex(leaf), common_name(leaf.subject) or "",
                                      issuer_id, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                                      status=status)
        for name in names:
            registry.attach_policy(name, cid)
    console.print(f"{cid} registered ({status}), issued by CA {issuer_id[:16]}")

