"""Mirror the registry to AWS IoT Core: CAs, certificates, things, policies, attachments, provisioning templates.

Two halves. :func:`plan` is pure: it compares what the registry holds (:class:`Desired`, from a snapshot) with
what the account holds (:class:`Observed`, read by :class:`AwsIot`) and returns the :class:`Action` list that
makes the account match, in dependency order (CAs, thing types, policies, certificates, things, attachments,
templates). :class:`AwsIot` is the boto3 shell: it reads the account and applies actions one by one.

The mirror only adds and updates: nothing that exists only in the account is deleted or detached (it is
counted in :attr:`Plan.only_in_aws`). Running it twice changes nothing the second time. A certificate that is
REVOKED here and absent there is not registered (there is nothing to protect); one that is REVOKED there
cannot come back (AWS IoT has no way out of REVOKED), which is reported as a conflict and left alone.

CAs: one whose private key is in the home (the home's root and issuing CAs) is registered in DEFAULT mode with
a verification certificate signed by that key for the account's registration code; any other in SNI_ONLY mode
(devices must then send SNI, which the AWS IoT Device SDKs do). Endpoint, region and credentials come from
boto3's usual places (``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``~/.aws/config``,
``AWS_ENDPOINT_URL_IOT``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from certs.errors import IotgateError

# ----------------------------------------------------------------------------------------------- values


class SyncError(IotgateError):
    exit_code = 1


@dataclasses.dataclass(frozen=True, slots=True)
class CertRef:
    """A certificate named by id in an action; the shell turns it into the certificate's ARN."""

    certificate_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """One API call. ``verb`` is what it does to ``kind`` ``name`` (``create``, ``update``, ``attach``, ...);
    ``detail`` says why, for the diff; ``operation``/``params`` are the boto3 call (params may hold CertRef)."""

    verb: str
    kind: str
    name: str
    detail: str
    operation: str
    params: Mapping[str, Any]

    def line(self) -> str:
        sign = {"create": "+", "register": "+", "attach": "+"}.get(self.verb, "~")
        return f"{sign} {self.verb} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclasses.dataclass(frozen=True, slots=True)
class Conflict:
    kind: str
    name: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class LocalCA:
    ca_id: str
    pem: str
    status: str
    auto_registration: bool
    template_body: str | None = None
    role_arn: str | None = None
    verification_pem: str | None = None  # set by the shell for a CA whose key it holds (DEFAULT mode)


@dataclasses.dataclass(frozen=True, slots=True)
class LocalCert:
    certificate_id: str
    pem: str
    status: str
    ca_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LocalThing:
    name: str
    thing_type: str | None
    attributes: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class LocalTemplate:
    name: str
    body: str
    enabled: bool
    description: str
    role_arn: str | None
    template_type: str  # FLEET_PROVISIONING | JITP
    pre_provisioning_hook: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Desired:
    cas: Mapping[str, LocalCA]
    certificates: Mapping[str, LocalCert]
    things: Mapping[str, LocalThing]
    policies: Mapping[str, str]  # name -> default version's document
    cert_policies: Mapping[str, tuple[str, ...]]
    cert_things: Mapping[str, tuple[str, ...]]
    templates: Mapping[str, LocalTemplate] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteCA:
    status: str
    auto_registration: bool
    template_body: str | None
    role_arn: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class RemotePolicy:
    document: str
    versions: tuple[tuple[str, bool, str], ...]  # (version id, is default, created) oldest first


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteTemplate:
    body: str
    enabled: bool
    description: str
    role_arn: str | None
    versions: tuple[tuple[int, bool], ...]  # (version id, is default) oldest first
    pre_provisioning_hook: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    cas: Mapping[str, RemoteCA]
    certificates: Mapping[str, str]  # id -> status
    things: Mapping[str, LocalThing]
    thing_types: frozenset[str]
    policies: Mapping[str, RemotePolicy]
    cert_policies: Mapping[str, frozenset[str]]  # only for certificates present in both
    thing_principals: Mapping[str, frozenset[str]]  # thing -> certificate ids, only for things in both
    templates: Mapping[str, RemoteTemplate] = dataclasses.field(default_factory=dict)
    templates_supported: bool = True
    all_policy_names: frozenset[str] = frozenset()
    all_template_names: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    conflicts: tuple[Conflict, ...]
    only_in_aws: Mapping[str, int]
    skipped: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            key = f"{a.verb} {a.kind}"
            out[key] = out.get(key, 0) + 1
        return out


# ----------------------------------------------------------------------------------------------- the plan


MAX_POLICY_VERSIONS = 5
MAX_TEMPLATE_VERSIONS = 5


def _same_json(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return a.strip() == b.strip()


def plan(desired: Desired, observed: Observed) -> Plan:
    """The actions that make the account hold what the registry holds (pure; see the module docstring)."""
    actions: list[Action] = []
    conflicts: list[Conflict] = []
    skipped: list[str] = []

    # CAs
    for ca_id, ca in sorted(desired.cas.items()):
        remote = observed.cas.get(ca_id)
        config = None
        if ca.template_body is not None:
            config = {"templateBody": ca.template_body}
            if ca.role_arn:
                config["roleArn"] = ca.role_arn
        if remote is None:
            params: dict[str, Any] = {"caCertificate": ca.pem, "setAsActive": ca.status == "ACTIVE",
                                      "allowAutoRegistration": ca.auto_registration}
            if ca.verification_pem:
                params["verificationCertificate"] = ca.verification_pem
                params["certificateMode"] = "DEFAULT"
                mode = "DEFAULT"
            else:
                params["certificateMode"] = "SNI_ONLY"
                mode = "SNI_ONLY"
            if config:
                params["registrationConfig"] = config
            detail = f"{ca.status}, {mode}" + (", auto-registration" if ca.auto_registration else "")
            actions.append(Action("register", "CA", ca_id, detail, "register_ca_certificate", params))
            continue
        changes, params = [], {"certificateId": ca_id}
        if remote.status != ca.status:
            changes.append(f"{remote.status} -> {ca.status}")
            params["newStatus"] = ca.status
        if remote.auto_registration != ca.auto_registration:
            changes.append("auto-registration " + ("on" if ca.auto_registration else "off"))
            params["newAutoRegistrationStatus"] = "ENABLE" if ca.auto_registration else "DISABLE"
        if config and (not _same_json(remote.template_body, ca.template_body) or remote.role_arn != ca.role_arn):
            changes.append("registration template")
            params["registrationConfig"] = config
        if changes:
            actions.append(Action("update", "CA", ca_id, ", ".join(changes), "update_ca_certificate", params))

    # thing types
    for thing_type in sorted({t.thing_type for t in desired.things.values() if t.thing_type}
                             - set(observed.thing_types)):
        actions.append(Action("create", "thing type", thing_type, "", "create_thing_type",
                              {"thingTypeName": thing_type}))

    # policies
    for name, document in sorted(desired.policies.items()):
        remote = observed.policies.get(name)
        if remote is None:
            actions.append(Action("create", "policy", name, "", "create_policy",
                                  {"policyName": name, "policyDocument": document}))
            continue
        if _same_json(remote.document, document):
            continue
        if len(remote.versions) >= MAX_POLICY_VERSIONS:
            oldest = next((v for v, default, _ in remote.versions if not default), None)
            if oldest is not None:
                actions.append(Action("delete", "policy version", f"{name} v{oldest}",
                                      f"AWS IoT keeps at most {MAX_POLICY_VERSIONS} versions",
                                      "delete_policy_version", {"policyName": name, "policyVersionId": oldest}))
        actions.append(Action("update", "policy", name, "new default version (document differs)",
                              "create_policy_version",
                              {"policyName": name, "policyDocument": document, "setAsDefault": True}))

    # certificates
    present: set[str] = set()
    for cid, cert in sorted(desired.certificates.items()):
        remote_status = observed.certificates.get(cid)
        if remote_status is None:
            if cert.status == "REVOKED":
                skipped.append(f"certificate {cid}: REVOKED here and not in the account, not registered")
                continue
            if cert.ca_id is not None and cert.ca_id in desired.cas:
                params = {"certificatePem": cert.pem, "caCertificatePem": desired.cas[cert.ca_id].pem,
                          "status": cert.status}
                operation = "register_certificate"
            else:
                params = {"certificatePem": cert.pem, "status": cert.status}
                operation = "register_certificate_without_ca"
            actions.append(Action("register", "certificate", cid, cert.status, operation, params))
            present.add(cid)
            continue
        present.add(cid)
        if remote_status == cert.status:
            continue
        if remote_status == "REVOKED":
            conflicts.append(Conflict("certificate", cid, f"REVOKED in the account, {cert.status} here: "
                                      "revocation cannot be undone on AWS IoT"))
            continue
        actions.append(Action("update", "certificate", cid, f"{remote_status} -> {cert.status}",
                              "update_certificate", {"certificateId": cid, "newStatus": cert.status}))

    # things
    for name, thing in sorted(desired.things.items()):
        remote = observed.things.get(name)
        attributes = dict(thing.attributes)
        if remote is None:
            params = {"thingName": name}
            if thing.thing_type:
                params["thingTypeName"] = thing.thing_type
            if attributes:
                params["attributePayload"] = {"attributes": attributes}
            actions.append(Action("create", "thing", name, "", "create_thing", params))
            continue
        changes, params = [], {"thingName": name}
        if remote.thing_type != thing.thing_type:
            changes.append(f"type {remote.thing_type or '-'} -> {thing.thing_type or '-'}")
            if thing.thing_type:
                params["thingTypeName"] = thing.thing_type
            else:
                params["removeThingType"] = True
        if dict(remote.attributes) != attributes:
            changes.append("attributes")
            # merge: an attribute given an empty value is removed, the others are set
            payload = {k: "" for k in remote.attributes if k not in attributes}
            payload.update(attributes)
            params["attributePayload"] = {"attributes": payload, "merge": True}
        if changes:
            actions.append(Action("update", "thing", name, ", ".join(changes), "update_thing", params))

    # attachments
    for cid in sorted(present):
        have = observed.cert_policies.get(cid, frozenset())
        for policy in desired.cert_policies.get(cid, ()):
            if policy not in have:
                actions.append(Action("attach", "policy", policy, f"to certificate {cid}", "attach_policy",
                                      {"policyName": policy, "target": CertRef(cid)}))
    for cid in sorted(present):
        for thing in desired.cert_things.get(cid, ()):
            if cid not in observed.thing_principals.get(thing, frozenset()):
                actions.append(Action("attach", "certificate", cid, f"to thing {thing}", "attach_thing_principal",
                                      {"thingName": thing, "principal": CertRef(cid)}))

    # provisioning templates
    if desired.templates and not observed.templates_supported:
        skipped.append(f"{len(desired.templates)} provisioning template(s): the endpoint does not serve "
                       "the provisioning-template API")
    elif desired.templates:
        for name, tpl in sorted(desired.templates.items()):
            remote = observed.templates.get(name)
            if remote is None and not tpl.role_arn:
                skipped.append(f"provisioning template {name}: AWS IoT needs its provisioning role "
                               f"(iotgate template update {name} --role-arn ARN)")
                continue
            if remote is None:
                params = {"templateName": name, "templateBody": tpl.body, "enabled": tpl.enabled,
                          "type": tpl.template_type}
                if tpl.description:
                    params["description"] = tpl.description
                if tpl.role_arn:
                    params["provisioningRoleArn"] = tpl.role_arn
                if tpl.pre_provisioning_hook:
                    params["preProvisioningHook"] = dict(tpl.pre_provisioning_hook)
                actions.append(Action("create", "provisioning template", name, tpl.template_type,
                                      "create_provisioning_template", params))
                continue
            if not _same_json(remote.body, tpl.body):
                if len(remote.versions) >= MAX_TEMPLATE_VERSIONS:
                    oldest = next((v for v, default in remote.versions if not default), None)
                    if oldest is not None:
                        actions.append(Action("delete", "provisioning template version", f"{name} v{oldest}",
                                              f"AWS IoT keeps at most {MAX_TEMPLATE_VERSIONS} versions",
                                              "delete_provisioning_template_version",
                                              {"templateName": name, "versionId": oldest}))
                actions.append(Action("update", "provisioning template", name, "new default version (body differs)",
                                      "create_provisioning_template_version",
                                      {"templateName": name, "templateBody": tpl.body, "setAsDefault": True}))
            changes, params = [], {"templateName": name}
            if remote.enabled != tpl.enabled:
                changes.append("enabled" if tpl.enabled else "disabled")
                params["enabled"] = tpl.enabled
            if (remote.description or "") != (tpl.description or ""):
                changes.append("description")
                params["description"] = tpl.description or ""
            if tpl.role_arn and remote.role_arn != tpl.role_arn:
                changes.append("role")
                params["provisioningRoleArn"] = tpl.role_arn
            if (remote.pre_provisioning_hook or None) != (dict(tpl.pre_provisioning_hook or {}) or None):
                if tpl.pre_provisioning_hook:
                    changes.append("pre-provisioning hook")
                    params["preProvisioningHook"] = dict(tpl.pre_provisioning_hook)
                else:
                    changes.append("no pre-provisioning hook")
                    params["removePreProvisioningHook"] = True
            if changes:
                actions.append(Action("update", "provisioning template", name, ", ".join(changes),
                                      "update_provisioning_template", params))

    only = {
        "certificates": len(set(observed.certificates) - set(desired.certificates)),
        "things": len(set(observed.things) - set(desired.things)),
        "policies": len(set(observed.all_policy_names) - set(desired.policies)),
        "provisioning templates": len(set(observed.all_template_names) - set(desired.templates)),
    }
    return Plan(tuple(actions), tuple(conflicts), {k: v for k, v in only.items() if v}, tuple(skipped))


def desired_from_snapshot(snapshot, templates: Iterable[LocalTemplate] = (),
                          ca_templates: Mapping[str, tuple[str, str | None]] | None = None) -> Desired:
    """What the registry holds, in the mirror's terms; ``ca_templates`` maps CA id -> (template body, role ARN)
    of the CAs registered with a JITP template."""
    ca_templates = ca_templates or {}
    cas = {}
    for ca_id, ca in snapshot.cas.items():
        body, role = ca_templates.get(ca_id, (None, None))
        cas[ca_id] = LocalCA(ca_id, ca.pem, ca.status, ca.auto_registration, body, role)
    certs = {cid: LocalCert(cid, c.pem, c.status, c.ca_id) for cid, c in snapshot.certificates.items()}
    things = {n: LocalThing(n, t.thing_type, dict(t.attributes)) for n, t in snapshot.things.items()}
    policies = {n: p.document for n, p in snapshot.policies.items()}
    return Desired(cas, certs, things, policies, dict(snapshot.cert_policies), dict(snapshot.cert_things),
                   {t.name: t for t in templates})


# ----------------------------------------------------------------------------------------------- the shell


def _paginate(client, operation: str, key: str, **kwargs) -> list:
    if client.can_paginate(operation):
        out: list = []
        for page in client.get_paginator(operation).paginate(**kwargs):
            out.extend(page.get(key, []))
        return out
    return client.__getattribute__(operation)(**kwargs).get(key, [])


class AwsIot:
    """Reads an account's AWS IoT registry and applies :class:`Action` lists, through a boto3 ``iot`` client."""

    def __init__(self, client) -> None:
        self.client = client
        self._arns: dict[str, str] = {}

    @classmethod
    def connect(cls, *, region: str | None = None, profile: str | None = None) -> "AwsIot":
        import boto3
        import botocore.exceptions as bexc

        try:
            session = boto3.Session(profile_name=profile, region_name=region)
            client = session.client("iot")
        except bexc.ProfileNotFound as exc:
            raise SyncError(f"AWS profile not found: {exc}; check --profile / AWS_PROFILE") from None
        except bexc.NoRegionError:
            raise SyncError("no AWS region: pass --region, or set AWS_REGION (or a region in ~/.aws/config)") from None
        return cls(client)

    def _call(self, operation: str, **params):
        import botocore.exceptions as bexc

        try:
            return getattr(self.client, operation)(**params)
        except bexc.NoCredentialsError:
            raise SyncError("no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or configure ~/.aws/credentials)") from None
        except bexc.EndpointConnectionError as exc:
            raise SyncError(f"AWS IoT did not answer: {exc}") from None

    def _list(self, operation: str, key: str, **kwargs) -> list:
        import botocore.exceptions as bexc

        try:
            return _paginate(self.client, operation, key, **kwargs)
        except bexc.NoCredentialsError:
            raise SyncError("no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or configure ~/.aws/credentials)") from None
        except bexc.EndpointConnectionError as exc:
            raise SyncError(f"AWS IoT did not answer: {exc}") from None

    def registration_code(self) -> str:
        return self._call("get_registration_code")["registrationCode"]

    def observe(self, desired: Desired) -> Observed:
        """Read what the account holds of everything `desired` names (and count the rest)."""
        import botocore.exceptions as bexc

        remote_cas = {}
        for ca_id in sorted(desired.cas):  # described one by one: a fleet has a few CAs, an account may hold many
            try:
                d = self._call("describe_ca_certificate", certificateId=ca_id)
            except bexc.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    continue
                raise
            desc = d["certificateDescription"]
            config = d.get("registrationConfig") or {}
            remote_cas[ca_id] = RemoteCA(desc["status"], desc.get("autoRegistrationStatus") == "ENABLE",
                                         config.get("templateBody"), config.get("roleArn"))
        certificates = {}
        for c in self._list("list_certificates", "certificates"):
            certificates[c["certificateId"]] = c["status"]
            self._arns[c["certificateId"]] = c["certificateArn"]
        things = {}
        for t in self._list("list_things", "things"):
            things[t["thingName"]] = LocalThing(t["thingName"], t.get("thingTypeName"), dict(t.get("attributes") or {}))
        thing_types = frozenset(t["thingTypeName"] for t in self._list("list_thing_types", "thingTypes"))
        policy_names = frozenset(p["policyName"] for p in self._list("list_policies", "policies"))
        policies = {}
        for name in sorted(set(desired.policies) & policy_names):
            got = self._call("get_policy", policyName=name)
            versions = self._call("list_policy_versions", policyName=name).get("policyVersions", [])
            ordered = sorted(versions, key=lambda v: int(v["versionId"]))
            policies[name] = RemotePolicy(got["policyDocument"], tuple(
                (v["versionId"], bool(v.get("isDefaultVersion")), str(v.get("createDate", ""))) for v in ordered))
        cert_policies = {}
        for cid in sorted(set(desired.certificates) & set(certificates)):
            attached = self._list("list_attached_policies", "policies", target=self._arns[cid])
            cert_policies[cid] = frozenset(p["policyName"] for p in attached)
        thing_principals = {}
        for name in sorted(set(desired.things) & set(things)):
            arns = self._list("list_thing_principals", "principals", thingName=name)
            thing_principals[name] = frozenset(a.rsplit("/", 1)[-1] for a in arns)
        templates: dict[str, RemoteTemplate] = {}
        template_names: frozenset[str] = frozenset()
        supported = True
        if desired.templates:
            try:
                listed = self._list("list_provisioning_templates", "templates")
            except (bexc.ClientError, NotImplementedError) as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if isinstance(exc, NotImplementedError) or code in ("501", "NotImplemented", "UnknownOperation",
                                                                     "InternalFailure"):
                    supported, listed = False, []
                else:
                    raise
            template_names = frozenset(t["templateName"] for t in listed)
            for name in sorted(set(desired.templates) & template_names):
                d = self._call("describe_provisioning_template", templateName=name)
                versions = self._call("list_provisioning_template_versions", templateName=name).get("versions", [])
                ordered = sorted(versions, key=lambda v: int(v["versionId"]))
                templates[name] = RemoteTemplate(
                    d.get("templateBody", ""), bool(d.get("enabled")), d.get("description") or "",
                    d.get("provisioningRoleArn"),
                    tuple((int(v["versionId"]), bool(v.get("isDefaultVersion"))) for v in ordered),
                    d.get("preProvisioningHook"))
        return Observed(remote_cas, certificates, things, thing_types, policies, cert_policies, thing_principals,
                        templates, supported, policy_names, template_names)

    def _resolve(self, value):
        if isinstance(value, CertRef):
            arn = self._arns.get(value.certificate_id)
            if arn is None:
                got = self._call("describe_certificate", certificateId=value.certificate_id)
                arn = self._arns[value.certificate_id] = got["certificateDescription"]["certificateArn"]
            return arn
        return value

    def apply(self, actions: Iterable[Action], progress: Callable[[Action], None] = lambda a: None) -> int:
        """Run the actions in order; the first refusal stops the run (SyncError naming the action and how many
        were done before it). Returns how many were applied."""
        import botocore.exceptions as bexc

        done = 0
        for action in actions:
            params = {k: self._resolve(v) for k, v in action.params.items()}
            try:
                result = self._call(action.operation, **params)
            except bexc.ClientError as exc:
                error = exc.response.get("Error", {})
                raise SyncError(f"AWS IoT refused `{action.line()}` ({action.operation}): "
                                f"{error.get('Code', '?')}: {error.get('Message', '')} "
                                f"({done} change(s) applied before it; run the sync again after fixing it)") from None
            if action.operation in ("register_certificate", "register_certificate_without_ca"):
                self._arns[result["certificateId"]] = result["certificateArn"]
            done += 1
            progress(action)
        return done


def verification_certificate(ca, registration_code: str, *, now: dt.datetime) -> str:
    """AWS IoT's proof of possession for RegisterCACertificate (DEFAULT mode): a certificate whose subject CN
    is the account's registration code, signed by the CA's key (`ca` is a certs CertificateAuthority)."""
    from cryptography.hazmat.primitives import serialization

    from certs.keys import generate_private_key

    key = generate_private_key("ec-p256")
    cert = ca.issue_client(key, registration_code, now=now, days=1)
    return cert.public_bytes(serialization.Encoding.PEM).decode()
