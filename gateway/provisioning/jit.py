"""Just-in-time registration (JITR) and provisioning (JITP) of device certificates, as AWS IoT Core does them.

A device presents a certificate the registry does not know, whose chain OpenSSL verified against a registered CA.
When that CA is ACTIVE and allows auto-registration:

- without a registration template (JITR) the certificate is registered PENDING_ACTIVATION and the event
  ``$aws/events/certificates/registered/<caCertificateId>`` is published with AWS's fields (certificateId,
  caCertificateId, timestamp in epoch ms, certificateStatus, awsAccountId, certificateRegistrationTimestamp as
  epoch ms text). The connection is refused; an operator (or a program on that topic) activates the certificate
  and attaches policies, and the device's next connection gets in. A certificate still PENDING_ACTIVATION that
  connects again causes the event again, as on AWS.
- with a registration template (JITP) the certificate is registered PENDING_ACTIVATION, the template is resolved
  with what the certificate says (``AWS::IoT::Certificate::CommonName``, ``...::SerialNumber``, ``...::Id``, ...),
  its policies are created or found, its thing created (or updated as its OverrideSettings say), everything
  attached, and the certificate set to the template's status (ACTIVE). AWS IoT drops that first connection too:
  the device reconnects and is then served with what was provisioned.

:func:`just_in_time` runs in the gateway's registry executor (it writes the registry); the gateway publishes the
event and refuses the connection with the outcome's reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import common_name, issued_by, serial_hex
from gateway.policy import PolicyError, parse_policy
from gateway.provisioning.template import Resolved, TemplateError, certificate_parameters, parse
from gateway.registry import CA, AlreadyExists, NotFound, Registry, RegistryError

REGISTERED_TOPIC = "$aws/events/certificates/registered/{ca_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class JitOutcome:
    """What happened to an unknown (or PENDING_ACTIVATION) certificate. ``kind``: ``jitr`` (registered, or still
    pending: the event is in ``event``), ``jitp`` (provisioned: it connects next time), ``jitp_failed`` (registered
    PENDING_ACTIVATION, the template could not be applied: ``reason`` says why), ``none`` (no auto-registration
    CA issued it)."""

    kind: str
    certificate_id: str
    ca_id: str | None = None
    reason: str = ""
    event: tuple[str, bytes] | None = None
    thing: str | None = None


@functools.lru_cache(maxsize=256)
def _subject(pem: str) -> x509.Name | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode()).subject
    except ValueError:
        return None


def may_auto_register(der: bytes, auto_registration: Iterable[str], ca_pems: Mapping[str, str]) -> bool:
    """Cheap check on the event loop, before any registry work: was `der` issued under the name of one of the
    auto-registration CAs? (Its signature is checked by :func:`just_in_time`.)"""
    try:
        issuer = x509.load_der_x509_certificate(der).issuer
    except ValueError:
        return False
    return any(_subject(ca_pems[ca_id]) == issuer for ca_id in auto_registration if ca_id in ca_pems)


def issuing_ca(cert: x509.Certificate, cas: list[CA]) -> CA | None:
    """The ACTIVE auto-registration CA that signed `cert`, if any."""
    for ca in cas:
        if ca.status != "ACTIVE" or not ca.auto_registration:
            continue
        try:
            ca_cert = x509.load_pem_x509_certificate(ca.pem.encode())
        except ValueError:
            continue
        if ca_cert.subject == cert.issuer and issued_by(cert, ca_cert):
            return ca
    return None


def registered_event(certificate_id: str, ca_id: str, *, account: str, now: dt.datetime,
                     registered_at: dt.datetime) -> tuple[str, bytes]:
    """(topic, payload) of AWS IoT's certificate-registered event."""
    payload = {"certificateId": certificate_id, "caCertificateId": ca_id,
               "timestamp": int(now.timestamp() * 1000), "certificateStatus": "PENDING_ACTIVATION",
               "awsAccountId": account, "certificateRegistrationTimestamp": str(int(registered_at.timestamp() * 1000))}
    return REGISTERED_TOPIC.format(ca_id=ca_id), json.dumps(payload, separators=(",", ":")).encode()


def just_in_time(registry: Registry, der: bytes, *, account: str, now: dt.datetime) -> JitOutcome:
    """Register (JITR) or provision (JITP) the certificate `der`, if an auto-registration CA issued it."""
    certificate_id = hashlib.sha256(der).hexdigest()
    cert = x509.load_der_x509_certificate(der)
    ca = issuing_ca(cert, registry.list_cas())
    if ca is None:
        return JitOutcome("none", certificate_id)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    try:
        existing = registry.get_certificate(certificate_id)
    except NotFound:
        existing = None
    if existing is not None and existing.status != "PENDING_ACTIVATION":
        return JitOutcome("none", certificate_id, ca.ca_id)  # registered meanwhile: the normal rules apply
    body, _role = registry.ca_registration_template(ca.ca_id)
    if existing is None:
        try:
            existing = registry.register_certificate(
                certificate_id, pem, serial_hex(cert), common_name(cert.subject) or "", ca.ca_id,
                cert.not_valid_before_utc, cert.not_valid_after_utc, status="PENDING_ACTIVATION")
        except AlreadyExists:  # another connection of the same device got there first
            existing = registry.get_certificate(certificate_id)
    if body is None:
        event = registered_event(certificate_id, ca.ca_id, account=account, now=now,
                                 registered_at=existing.created_at)
        return JitOutcome("jitr", certificate_id, ca.ca_id, "registered just in time: PENDING_ACTIVATION until "
                          "it is activated", event)
    try:
        thing = provision(registry, parse(body).resolve(certificate_parameters(cert, certificate_id)),
                          certificate_id)
    except (TemplateError, RegistryError, PolicyError, ValueError) as exc:
        return JitOutcome("jitp_failed", certificate_id, ca.ca_id,
                          f"just-in-time provisioning failed (the certificate stays PENDING_ACTIVATION): {exc}")
    return JitOutcome("jitp", certificate_id, ca.ca_id, "provisioned just in time from its CA's template; "
                      "the first connection is dropped, as on AWS IoT: reconnect", thing=thing)


def policy_name_for(document: str) -> str:
    """The name of a policy a template creates from a PolicyDocument: the SHA-256 of its canonical JSON."""
    canonical = json.dumps(json.loads(document), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def provision(registry: Registry, resolved: Resolved, certificate_id: str) -> str | None:
    """Apply a resolved template to the registry for the registered certificate `certificate_id`: policies, thing,
    attachments, then the certificate's status. Returns the thing's name."""
    cert = resolved.certificate
    if cert is not None and cert.certificate_id not in (None, certificate_id):
        raise ValueError(f"the template's certificate resource names certificate {cert.certificate_id}, not the "
                         f"one connecting ({certificate_id})")
    policies = []
    for p in resolved.policies:
        if p.policy_name is not None:
            registry.get_policy(p.policy_name)
            policies.append(p.policy_name)
            continue
        parse_policy(p.document, name=p.logical_name)
        name = policy_name_for(p.document)
        try:
            registry.create_policy(name, p.document)
        except AlreadyExists:
            pass
        policies.append(name)
    thing_name = None
    if resolved.thing is not None:
        t = resolved.thing
        thing_name = t.thing_name
        try:
            current = registry.get_thing(thing_name)
        except NotFound:
            registry.create_thing(thing_name, t.thing_type, dict(t.attributes))
        else:
            attrs = t.overrides.get("AttributePayload", "DO_NOTHING")
            ttype = t.overrides.get("ThingTypeName", "DO_NOTHING")
            if "FAIL" in (attrs, ttype):
                raise ValueError(f"thing {thing_name!r} exists and the template's OverrideSettings say FAIL")
            changes = {}
            if attrs == "MERGE":
                changes["attributes"] = {**current.attributes, **t.attributes}
            elif attrs == "REPLACE":
                changes["attributes"] = dict(t.attributes)
            if ttype == "REPLACE":
                changes["thing_type"] = t.thing_type
            if changes:
                registry.update_thing(thing_name, **changes)
        registry.attach_thing_principal(thing_name, certificate_id)
    for name in policies:
        registry.attach_policy(name, certificate_id)
    registry.set_certificate_status(certificate_id, cert.status if cert is not None else "ACTIVE")
    return thing_name
