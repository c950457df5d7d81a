"""`iotgate policy`: AWS IoT policy documents, versions, attachments, tests and lint."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from certs.authority import load_certificates
from gateway.policy import Identity, PolicyError, Request, ThingInfo, check_request, compile_policies, lint, \
    parse_policy, test_authorization_response
from gateway.registry import Certificate, NotFound, Policy, PolicyVersion, Registry
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when
from devices.provisioning import ProvisioningError, read_text


@click.group()
def policy() -> None:
    """AWS IoT policies: create, version, attach, detach, test and lint."""


def _load_document(path: Path, name: str) -> str:
    text = read_text(path)
    parse_policy(text, name=name)  # PolicyError names the statement and field
    return text


def policy_json(p: Policy) -> dict:
    return {"policyName": p.name, "defaultVersionId": str(p.default_version_id),
            "policyDocument": p.document, "createdAt": when(p.created_at)}


def version_json(v: PolicyVersion) -> dict:
    return {"versionId": str(v.version_id), "isDefaultVersion": v.is_default, "createdAt": when(v.created_at)}


@policy.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def create(app: AppContext, name: str, file: Path) -> None:
    """Create policy NAME from a JSON document FILE (validated as AWS IoT does)."""
    text = _load_document(file, name)
    p = app.registry().create_policy(name, text)
    console.print(f"policy {p.name} created (version {p.default_version_id})")


@policy.command("create-version")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set-as-default", is_flag=True, help="Make the new version the one in force.")
@pass_app
def create_version(app: AppContext, name: str, file: Path, set_as_default: bool) -> None:
    """Add a version to a policy (at most 5 versions, as AWS IoT)."""
    text = _load_document(file, name)
    v = app.registry().create_policy_version(name, text, set_as_default=set_as_default)
    console.print(f"policy {name} version {v.version_id} created{' (default)' if v.is_default else ''}")


@policy.command("set-default-version")
@click.argument("name")
@click.argument("version_id", type=int)
@pass_app
def set_default_version(app: AppContext, name: str, version_id: int) -> None:
    """Make VERSION_ID the version in force."""
    app.registry().set_default_policy_version(name, version_id)
    console.print(f"policy {name}: version {version_id} is the default")


@policy.command("list-versions")
@click.argument("name")
@json_option
@pass_app
def list_versions(app: AppContext, name: str, as_json: bool) -> None:
    """List a policy's versions."""
    rows = app.registry().list_policy_versions(name)
    if as_json:
        emit_json([version_json(v) for v in rows])
        return
    emit_table(f"policy {name}", ["version", "default", "created"],
               ((v.version_id, "yes" if v.is_default else "", when(v.created_at)) for v in rows))


@policy.command("delete-version")
@click.argument("name")
@click.argument("version_id", type=int)
@pass_app
def delete_version(app: AppContext, name: str, version_id: int) -> None:
    """Delete a non-default version."""
    app.registry().delete_policy_version(name, version_id)
    console.print(f"policy {name}: version {version_id} deleted")


@policy.command("delete")
@click.argument("name")
@pass_app
def delete(app: AppContext, name: str) -> None:
    """Delete a policy that is attached to no certificate."""
    app.registry().delete_policy(name)
    console.print(f"policy {name} deleted")


@policy.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List policies."""
    registry = app.registry()
    rows = registry.list_policies()
    if as_json:
        emit_json([{"policyName": p.name, "defaultVersionId": str(p.default_version_id)} for p in rows])
        return
    emit_table(f"{len(rows)} polic{'y' if len(rows) == 1 else 'ies'}", ["policy", "default version", "targets"],
               ((p.name, p.default_version_id, len(registry.list_policy_targets(p.name))) for p in rows))


@policy.command("show")
@click.argument("name")
@click.option("--version", "version_id", type=int, help="A version other than the default.")
@json_option
@pass_app
def show(app: AppContext, name: str, version_id: int | None, as_json: bool) -> None:
    """Show a policy document."""
    registry = app.registry()
    p = registry.get_policy(name)
    document = registry.get_policy_version(name, version_id).document if version_id else p.document
    if as_json:
        data = policy_json(p)
        data["policyDocument"] = document
        data["targets"] = registry.list_policy_targets(name)
        emit_json(data)
        return
    console.print(f"policy {p.name}, version {version_id or p.default_version_id} "
                  f"(default {p.default_version_id})")
    sys.stdout.write(document if document.endswith("\n") else document + "\n")


def _targets(registry: Registry, thing: str | None, cert_id: str | None) -> list[str]:
    if bool(thing) == bool(cert_id):
        raise click.UsageError("give either --thing NAME or --cert ID")
    if cert_id:
        return [registry.get_certificate(cert_id).certificate_id]
    certs = [c.certificate_id for c in registry.list_thing_principals(thing)]
    if not certs:
        raise ProvisioningError(f"thing {thing!r} has no certificate to attach a policy to")
    return certs


@policy.command("attach")
@click.argument("name")
@click.option("--thing", help="Attach to every certificate of this thing.")
@click.option("--cert", "cert_id", help="Attach to this certificate.")
@pass_app
def attach(app: AppContext, name: str, thing: str | None, cert_id: str | None) -> None:
    """Attach a policy to a certificate (at most 10 per certificate)."""
    registry = app.registry()
    registry.get_policy(name)
    for target in _targets(registry, thing, cert_id):
        registry.attach_policy(name, target)
        console.print(f"policy {name} attached to {target}")


@policy.command("detach")
@click.argument("name")
@click.option("--thing", help="Detach from every certificate of this thing.")
@click.option("--cert", "cert_id", help="Detach from this certificate.")
@pass_app
def detach(app: AppContext, name: str, thing: str | None, cert_id: str | None) -> None:
    """Detach a policy from a certificate."""
    registry = app.registry()
    registry.get_policy(name)
    for target in _targets(registry, thing, cert_id):
        registry.detach_policy(name, target)
        console.print(f"policy {name} detached from {target}")


def identity_for(registry: Registry, c: Certificate) -> Identity:
    """The policy identity of a registered certificate: its fields and the things attached to it."""
    cert = load_certificates(c.pem.encode(), source=f"certificate {c.certificate_id}")[0]
    things = {}
    for name in registry.list_principal_things(c.certificate_id):
        t = registry.get_thing(name)
        things[name] = ThingInfo(name=t.name, thing_type=t.thing_type, attributes=dict(t.attributes))
    return Identity.from_certificate(cert, things=things)


def _principal(registry: Registry, thing: str | None, cert_id: str | None) -> Certificate:
    if bool(thing) == bool(cert_id):
        raise click.UsageError("give either --thing NAME or --cert ID")
    if cert_id:
        return registry.get_certificate(cert_id)
    certs = registry.list_thing_principals(thing)
    if not certs:
        raise ProvisioningError(f"thing {thing!r} has no certificate")
    active = [c for c in certs if c.status == "ACTIVE"] or certs
    return max(active, key=lambda c: c.created_at)


@policy.command("test")
@click.option("--thing", help="Test as this thing's newest ACTIVE certificate.")
@click.option("--cert", "cert_id", help="Test as this certificate.")
@click.option("--action", required=True, help="iot:Connect, iot:Publish, iot:Subscribe, iot:Receive, ...")
@click.option("--resource", required=True, help="client/ID, topic/T, topicfilter/F or a full ARN.")
@click.option("--client-id", help="Client id of the connection (default: the thing name).")
@click.option("--source-ip", help="Source address, for aws:SourceIp.")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--account", default="123456789012", show_default=True)
@json_option
@pass_app
def test(app: AppContext, thing: str | None, cert_id: str | None, action: str, resource: str,
         client_id: str | None, source_ip: str | None, region: str, account: str, as_json: bool) -> None:
    """Decide one request as AWS IoT would: ALLOW (exit 0) or DENY (exit 1), and which statement decided.

    An unknown action or a resource without its type (topic/, topicfilter/, client/, thing/) is refused with exit
    2, as `policy create` refuses it in a document."""
    action, resource = check_request(action, resource)
    registry = app.registry()
    principal = _principal(registry, thing, cert_id)
    attached = registry.list_attached_policies(principal.certificate_id)
    documents = [parse_policy(p.document, name=p.name, version=str(p.default_version_id)) for p in attached]
    identity = identity_for(registry, principal)
    if client_id is None:
        things = registry.list_principal_things(principal.certificate_id)
        client_id = thing or (things[0] if things else principal.subject_cn)
    request = Request(action=action, resource=resource, client_id=client_id, source_ip=source_ip)
    decision = compile_policies(documents, identity, region=region, account=account).evaluate(request)
    if as_json:
        emit_json({"authResults": [test_authorization_response(decision, request, documents)]})
    else:
        verdict = "[bold green]ALLOW[/]" if decision.allowed else "[bold red]DENY[/]"
        console.print(f"{verdict} {action} {resource} as client {client_id!r} "
                      f"(certificate {principal.certificate_id[:16]}, {principal.status})")
        if decision.decided_by:
            for d in decision.decided_by:
                console.print(f"  decided by policy {d.policy} version {d.version} Statement[{d.statement_index}] "
                              f"({d.effect})")
        else:
            names = ", ".join(p.name for p in attached) or "none attached"
            console.print(f"  no statement allows it: implicit deny (policies: {names})")
        for error in decision.errors:
            console.print(f"  [yellow]skipped:[/] {error}")
    click.get_current_context().exit(0 if decision.allowed else 1)


@policy.command("lint")
@click.argument("name_or_file")
@json_option
@pass_app
def lint_cmd(app: AppContext, name_or_file: str, as_json: bool) -> None:
    """Report overly permissive statements (as Device Defender's IOT_POLICY_OVERLY_PERMISSIVE); exit 1 if any."""
    path = Path(name_or_file)
    if path.is_file():
        document = parse_policy(read_text(path), name=path.stem)
    else:
        try:
            p = app.registry().get_policy(name_or_file)
        except NotFound:
            raise PolicyError(f"{name_or_file!r} is neither a policy file nor a registered policy") from None
        document = parse_policy(p.document, name=p.name, version=str(p.default_version_id))
    findings = lint(document)
    if as_json:
        emit_json([{"statement": f.statement_index, "code": f.code, "message": f.message} for f in findings])
    elif findings:
        for f in findings:
            console.print(f"Statement[{f.statement_index}] {f.code}: {f.message}", soft_wrap=True)
    else:
        console.print(f"{name_or_file}: no overly permissive statement found")
    click.get_current_context().exit(1 if findings else 0)
