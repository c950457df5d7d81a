"""`iotgate pki`: the CA hierarchy and the gateway's own identities."""

from __future__ import annotations

import click

from cryptography import x509

from certs.authority import certificate_id, common_name, load_certificates
from certs.keys import KeyType
from certs.store import PASSPHRASE_ENV
from gateway.registry import NotFound
from iotgate.context import AppContext, console, emit_json, json_option, pass_app, when
from devices.provisioning import register_own_cas, rewrite_crl


@click.group()
def pki() -> None:
    """Build and inspect the PKI: root CA -> issuing CA -> server, gateway client and device certificates."""


@pki.command("init")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default=KeyType.EC_P256.value,
              show_default=True, help="Key type of the CAs and the gateway's certificates.")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME",
              help="Extra DNS name or IP for the gateway's server certificate (repeatable); "
                   "localhost, 127.0.0.1 and ::1 are always included.")
@click.option("--force", is_flag=True, help="Replace an existing PKI; CAs of the old one are set INACTIVE.")
@pass_app
def init(app: AppContext, key_type: str, server_names: tuple[str, ...], force: bool) -> None:
    """Create the PKI in the home and register its CAs."""
    store = app.store
    # A shared registry is opened first, so an unreachable database refuses before any file is written.
    registry = app.registry() if app.registry_url else None
    old_ids = []
    if force and store.exists():
        old_ids = [certificate_id(c) for c in (store.root_certificate(), store.issuing_certificate())]
    made = store.init(key_type=key_type, server_names=server_names, now=app.clock(),
                      passphrase=app.passphrase(), force=force)
    registry = registry or app.registry()
    for old in old_ids:
        if old not in (made.root.ca_id, made.issuing.ca_id):
            try:
                registry.set_ca_status(old, "INACTIVE")
            except NotFound:  # the old PKI was never registered in this registry
                pass
    register_own_cas(registry, store)
    rewrite_crl(store, registry, made.issuing, app.clock())
    p = store.paths
    console.print(f"PKI created in [bold]{app.home}[/] ({key_type})")
    console.print(f"  root CA     {made.root.ca_id}")
    console.print(f"  issuing CA  {made.issuing.ca_id}")
    console.print(f"  server      {p.server_cert.name} for {', '.join(_sans(made.server))}")
    console.print(f"  gateway     {p.client_cert.name} (CN {common_name(made.gateway_client.subject)}), issued by "
                  f"{p.upstream_ca_cert.name}: the only CA the upstream broker trusts")
    encrypted = "passphrase-encrypted" if app.passphrase() else f"unencrypted (set {PASSPHRASE_ENV} to encrypt)"
    console.print(f"  CA keys     0600, {encrypted}")


@pki.command("crl")
@pass_app
def crl(app: AppContext) -> None:
    """Rewrite crl.pem from the registry's REVOKED certificates (signed by the issuing CA)."""
    count = rewrite_crl(app.store, app.registry(), app.issuer(), app.clock())
    console.print(f"{app.store.paths.crl} rewritten ({count} revoked)")


@pki.command("show")
@json_option
@pass_app
def show(app: AppContext, as_json: bool) -> None:
    """Show the CAs, the server and gateway client certificates, and where the files are."""
    store = app.store
    store.require()
    entries = []
    for label, path in (("root CA", store.paths.root_cert), ("issuing CA", store.paths.issuing_cert),
                        ("server", store.paths.server_cert), ("upstream CA", store.paths.upstream_ca_cert),
                        ("gateway client", store.paths.client_cert)):
        cert = load_certificates(path.read_bytes(), source=str(path))[0]
        entries.append({"role": label, "file": str(path), "id": certificate_id(cert),
                        "subject": cert.subject.rfc4514_string(), "not_after": when(cert.not_valid_after_utc)})
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        console.print(f"{entry['role']:<15} {entry['subject']}\n{'':<15} id {entry['id']}  "
                      f"until {entry['not_after']}\n{'':<15} {entry['file']}")


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in ext.get_values_for_type(x509.IPAddress)]

