"""`iotgate aws`: mirror the registry to AWS IoT Core."""

from __future__ import annotations

import dataclasses

import click
from cryptography import x509

from certs.authority import CertificateAuthority, certificate_id
from certs.keys import load_private_key
from devices import aws_sync
from iotgate.context import AppContext, console, emit_json, pass_app


@click.group()
def aws() -> None:
    """AWS IoT Core: mirror this registry to an account."""


def _own_authorities(app: AppContext) -> dict[str, CertificateAuthority]:
    """The CAs of this home whose private keys are here (root and issuing), by CA id."""
    store = app.store
    out = {}
    for cert_path, key_path in ((store.paths.root_cert, store.paths.root_key),
                                (store.paths.issuing_cert, store.paths.issuing_key)):
        if not (cert_path.exists() and key_path.exists()):
            continue
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        out[certificate_id(cert)] = (cert, key_path)
    return {cid: CertificateAuthority(load_private_key(key_path, app.passphrase()), cert)
            for cid, (cert, key_path) in out.items()}


def _templates(registry) -> list[aws_sync.LocalTemplate]:
    lister = registry.list_provisioning_templates
    # a local hook (a program or a loopback URL) means nothing to AWS IoT: only a Lambda ARN is mirrored
    return [aws_sync.LocalTemplate(t.name, t.body, t.enabled, t.description, t.role_arn, t.template_type,
                                   t.pre_provisioning_hook if (t.pre_provisioning_hook or {}).get(
                                       "targetArn", "").startswith("arn:") else None)
            for t in lister()]


def _ca_templates(registry) -> dict[str, tuple[str, str | None]]:
    return registry.ca_registration_configs()


@aws.command("sync")
@click.option("--dry-run", is_flag=True, help="Print what would change in the account, change nothing.")
@click.option("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config).")
@click.option("--profile", help="AWS profile (default: AWS_PROFILE or the default profile).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and what was applied) as JSON.")
@pass_app
def sync(app: AppContext, dry_run: bool, region: str | None, profile: str | None, as_json: bool) -> None:
    """Register CAs and certificates, create things, thing types and policies, attach policies and
    certificates, create provisioning templates in AWS IoT Core, so the account holds what this registry holds.

    Only adds and updates: nothing that exists only in the account is deleted. A second run changes nothing.
    """
    registry = app.registry()
    snapshot = registry.snapshot()
    iot = aws_sync.AwsIot.connect(region=region, profile=profile)
    own = {cid: ca for cid, ca in _own_authorities(app).items() if cid in snapshot.cas}
    desired = aws_sync.desired_from_snapshot(snapshot, _templates(registry), ca_templates=_ca_templates(registry))
    observed = iot.observe(desired)
    # a CA still to register whose key is here gets DEFAULT mode: a verification certificate for the account's
    # registration code, signed by that key
    to_register = [cid for cid in own if cid not in observed.cas]
    if to_register:
        registration_code = iot.registration_code()
        cas = dict(desired.cas)
        for cid in to_register:
            pem = aws_sync.verification_certificate(own[cid], registration_code, now=app.clock())
            cas[cid] = dataclasses.replace(cas[cid], verification_pem=pem)
        desired = dataclasses.replace(desired, cas=cas)
    the_plan = aws_sync.plan(desired, observed)

    if as_json:
        applied = 0 if dry_run else iot.apply(the_plan.actions)
        emit_json({"dryRun": dry_run, "actions": [
            {"verb": a.verb, "kind": a.kind, "name": a.name, "detail": a.detail, "operation": a.operation}
            for a in the_plan.actions], "applied": applied,
            "conflicts": [{"kind": c.kind, "name": c.name, "detail": c.detail} for c in the_plan.conflicts],
            "skipped": list(the_plan.skipped), "onlyInAws": dict(the_plan.only_in_aws)})
    else:
        if not the_plan.actions:
            console.print("in sync: the account already holds everything this registry holds")
        for action in the_plan.actions:
            console.print(action.line(), markup=False)
        for conflict in the_plan.conflicts:
            console.print(f"! {conflict.kind} {conflict.name}: {conflict.detail}", markup=False)
        for reason in the_plan.skipped:
            console.print(f"- skipped {reason}", markup=False)
        if the_plan.only_in_aws:
            console.print("only in the account (left alone): "
                          + ", ".join(f"{n} {k}" for k, n in the_plan.only_in_aws.items()), markup=False)
        counts = ", ".join(f"{n} {k}" for k, n in the_plan.counts().items()) or "no change"
        if dry_run:
            console.print(f"dry run: {counts}; nothing was changed")
        elif the_plan.actions:
            applied = iot.apply(the_plan.actions)
            console.print(f"applied {applied} change(s): {counts}")
    if the_plan.conflicts:
        raise aws_sync.SyncError(f"{len(the_plan.conflicts)} conflict(s) left as they are (listed above)")
