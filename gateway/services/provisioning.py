"""Fleet provisioning by claim: AWS IoT's device provisioning MQTT API (JSON payloads).

``$aws/certificates/create/json`` (CreateKeysAndCertificate): a new key pair and certificate, signed by the home's
issuing CA, PENDING_ACTIVATION, with a certificate ownership token; ``$aws/certificates/create-from-csr/json``
(CreateCertificateFromCsr): the same for the device's own CSR (its key never leaves it);
``$aws/provisioning-templates/<name>/provision/json`` (RegisterThing): with an ownership token and the
template's parameters, the FLEET_PROVISIONING template is resolved (``gateway.provisioning.template``), an
optional pre-provisioning hook asked, and the thing, policies and attachments made, the certificate set to the
template's status; the answer carries ``deviceConfiguration`` and ``thingName``.

Answers go to ``<request topic>/accepted`` or ``/rejected`` (``{"statusCode", "errorCode", "errorMessage"}``) on
the requesting connection only, as AWS IoT answers "through the same MQTT connection used to publish the API
request": a private key must never reach another subscriber of the same topic (claim certificates are shared by a
whole batch of devices). Ownership tokens are random, stored as their SHA-256, single use, and expire after one
hour. Whether a device may call these at all is decided by its (claim) policy: iot:Publish on the request topics,
iot:Subscribe and iot:Receive on the replies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority, certificate_id, common_name, load_csr, serial_hex
from certs.errors import PKIError
from certs.keys import generate_private_key, private_key_pem
from gateway.policy import PolicyError
from gateway.provisioning.jit import provision
from gateway.provisioning.template import TemplateError, certificate_parameters, parse
from gateway.registry import NotFound, RegistryError
from gateway.registry.schema import UTCDateTime
from gateway.services.base import Message, Request
from gateway.services.store import metadata

CREATE = "$aws/certificates/create/json"
CREATE_FROM_CSR = "$aws/certificates/create-from-csr/json"
PROVISION = "$aws/provisioning-templates/+/provision/json"
TOKEN_LIFETIME = dt.timedelta(hours=1)
HOOK_TIMEOUT = 5.0  # AWS IoT's limit for a pre-provisioning hook
CERT_DAYS = 365
CREATED_CN = "iotgate-fleet-provisioned"  # subject of a CreateKeysAndCertificate certificate

ownership_tokens = sa.Table(
    "provisioning_ownership_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("certificate_id", sa.String(64), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False),
)


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass(frozen=True, slots=True)
class HookAnswer:
    allow: bool
    overrides: dict[str, str]


def run_hook(target: str, event: dict, *, timeout: float = HOOK_TIMEOUT) -> HookAnswer:
    """Ask a pre-provisioning hook: a loopback http(s) URL (POST, JSON) or a program (the event as JSON on stdin).
    Its answer is AWS's: {"allowProvisioning": bool, "parameterOverrides": {name: value}}."""
    data = json.dumps(event).encode()
    parts = urlsplit(target)
    try:
        if parts.scheme in ("http", "https"):
            if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise Rejected(500, "InternalFailure", "the pre-provisioning hook URL must be on loopback")
            req = urllib.request.Request(target, data, {"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback checked above
                body = resp.read(65536)
        else:
            done = subprocess.run(shlex.split(target), input=data, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise Rejected(500, "InternalFailure", f"the pre-provisioning hook exited with {done.returncode}")
            body = done.stdout
    except subprocess.TimeoutExpired:
        raise Rejected(500, "InternalFailure", f"the pre-provisioning hook did not answer within {timeout:g} s") \
            from None
    except (OSError, urllib.error.URLError) as exc:
        raise Rejected(500, "InternalFailure", f"the pre-provisioning hook failed: {exc}") from None
    try:
        answer = json.loads(body)
        allow = answer["allowProvisioning"]
        overrides = answer.get("parameterOverrides") or {}
        if not isinstance(allow, bool) or not isinstance(overrides, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Rejected(500, "InternalFailure", "the pre-provisioning hook's answer is not "
                       '{"allowProvisioning": true|false, "parameterOverrides": {...}}') from None
    return HookAnswer(allow, {str(k): str(v) for k, v in overrides.items()})


class ProvisioningService:
    """The three operations over the registry (things, certificates, policies, templates) and the store (tokens).
    ``issuer`` returns the CA that signs (loaded when first needed: the gateway may run without the CA key)."""

    name = "provisioning"
    filters = (CREATE, CREATE_FROM_CSR, PROVISION)

    def __init__(self, registry, store, issuer: Callable[[], CertificateAuthority], *,
                 account: str = "123456789012", region: str = "us-east-1",
                 hook: Callable[[str, dict], HookAnswer] = run_hook) -> None:
        self.registry = registry
        self.store = store
        self._issuer_factory = issuer
        self._issuer: CertificateAuthority | None = None
        self.account = account
        self.region = region
        self.hook = hook

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Request) -> list[Message]:
        to = request.caller.connection
        now = dt.datetime.fromtimestamp(request.now, dt.UTC)
        try:
            try:
                payload = orjson.loads(request.payload) if request.payload else {}
            except orjson.JSONDecodeError:
                raise Rejected(400, "InvalidPayload", "the request payload is not JSON") from None
            if not isinstance(payload, dict):
                raise Rejected(400, "InvalidPayload", "the request payload is not a JSON object")
            if request.topic == CREATE:
                answer = self._create(now)
            elif request.topic == CREATE_FROM_CSR:
                answer = self._create_from_csr(payload, now)
            else:
                answer = self._register_thing(request.topic.split("/")[2], payload, request, now)
        except Rejected as exc:
            body = {"statusCode": exc.status, "errorCode": exc.code, "errorMessage": exc.message}
            return [Message(request.topic + "/rejected", orjson.dumps(body), to)]
        return [Message(request.topic + "/accepted", orjson.dumps(answer), to)]

    # ------------------------------------------------------------------ certificates

    def issuer(self) -> CertificateAuthority:
        if self._issuer is None:
            try:
                self._issuer = self._issuer_factory()
            except (PKIError, OSError, ValueError) as exc:
                raise Rejected(500, "InternalFailure", f"the gateway cannot sign certificates: {exc}") from None
        return self._issuer

    def _issue(self, cert: x509.Certificate, issuer: CertificateAuthority, now: dt.datetime) -> tuple[str, str, str]:
        """Register `cert` PENDING_ACTIVATION with a new ownership token: (certificate id, PEM, token)."""
        cid = certificate_id(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        try:
            self.registry.register_certificate(cid, pem, serial_hex(cert), common_name(cert.subject) or "",
                                               issuer.ca_id, cert.not_valid_before_utc, cert.not_valid_after_utc,
                                               status="PENDING_ACTIVATION")
        except RegistryError as exc:
            raise Rejected(500, "InternalFailure", f"the certificate could not be registered: {exc}") from None
        token = secrets.token_urlsafe(32)
        with self.store.write() as conn:
            conn.execute(sa.insert(ownership_tokens).values(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(), certificate_id=cid,
                expires_at=now + TOKEN_LIFETIME, used=False))
        return cid, pem, token

    def _create(self, now: dt.datetime) -> dict:
        issuer = self.issuer()
        key = generate_private_key("ec-p256")
        cert = issuer.issue_client(key, CREATED_CN, now=now, days=CERT_DAYS)
        cid, pem, token = self._issue(cert, issuer, now)
        return {"certificateId": cid, "certificatePem": pem, "privateKey": private_key_pem(key).decode(),
                "certificateOwnershipToken": token}

    def _create_from_csr(self, payload: dict, now: dt.datetime) -> dict:
        text = payload.get("certificateSigningRequest")
        if not isinstance(text, str) or not text.strip():
            raise Rejected(400, "InvalidPayload", "certificateSigningRequest (a PEM CSR) is required")
        try:
            csr = load_csr(text.encode(), source="certificateSigningRequest")
            cn = common_name(csr.subject)
            if not cn:
                raise PKIError("certificateSigningRequest: the subject has no CN")
            issuer = self.issuer()
            cert = issuer.sign_device_csr(csr, cn, now=now, days=CERT_DAYS, source="certificateSigningRequest")
        except PKIError as exc:
            raise Rejected(400, "InvalidCsr", str(exc)) from None
        cid, pem, token = self._issue(cert, issuer, now)
        return {"certificateId": cid, "certificatePem": pem, "certificateOwnershipToken": token}

    # ------------------------------------------------------------------ RegisterThing

    def _take_token(self, token: object, now: dt.datetime) -> str:
        if not isinstance(token, str) or not token:
            raise Rejected(400, "InvalidPayload", "certificateOwnershipToken is required")
        digest = hashlib.sha256(token.encode()).hexdigest()
        c = ownership_tokens.c
        with self.store.write() as conn:
            row = conn.execute(sa.select(ownership_tokens).where(c.token_sha256 == digest)).first()
            if row is None or row.used:
                raise Rejected(400, "InvalidCertificateOwnershipToken",
                               "the certificate ownership token is not valid (unknown or already used)")
            if row.expires_at <= now:
                raise Rejected(400, "InvalidCertificateOwnershipToken",
                               "the certificate ownership token expired (tokens are valid for one hour): "
                               "create a new certificate")
            conn.execute(sa.update(ownership_tokens).where(c.token_sha256 == digest).values(used=True))
            # expired tokens are dropped as new ones are taken: the table stays as small as the hour's traffic
            conn.execute(sa.delete(ownership_tokens).where(c.expires_at <= now))
        return row.certificate_id

    def _untake(self, token: str) -> None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.store.write() as conn:
            conn.execute(sa.update(ownership_tokens).where(ownership_tokens.c.token_sha256 == digest)
                         .values(used=False))

    def _register_thing(self, name: str, payload: dict, request: Request, now: dt.datetime) -> dict:
        parameters = payload.get("parameters") or {}
        if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
            raise Rejected(400, "InvalidPayload", "parameters must be an object of string values")
        try:
            template = self.registry.get_provisioning_template(name)
        except (NotFound, RegistryError):
            raise Rejected(404, "ResourceNotFound", f"no provisioning template {name!r}") from None
        if template.template_type != "FLEET_PROVISIONING":
            raise Rejected(400, "InvalidParameters", f"template {name!r} is a JITP template, not a fleet "
                                                     "provisioning template")
        if not template.enabled:
            raise Rejected(403, "TemplateDisabled", f"provisioning template {name!r} is disabled")
        token = payload.get("certificateOwnershipToken")
        cid = self._take_token(token, now)
        try:
            cert_row = self.registry.get_certificate(cid)
            cert = x509.load_pem_x509_certificate(cert_row.pem.encode())
            values = {**parameters, **certificate_parameters(cert, cid), "AWS::IoT::Certificate::Id": cid}
            if template.pre_provisioning_hook:
                event = {"claimCertificateId": request.caller.principal_id, "certificateId": cid,
                         "certificatePem": cert_row.pem, "templateArn":
                         f"arn:aws:iot:{self.region}:{self.account}:provisioningtemplate/{name}",
                         "clientId": request.caller.client_id, "parameters": parameters}
                answer = self.hook(template.pre_provisioning_hook["targetArn"], event)
                if not answer.allow:
                    raise Rejected(403, "AccessDenied", "the pre-provisioning hook refused provisioning")
                values.update(answer.overrides)
            resolved = parse(template.body).resolve(values)
            thing = provision(self.registry, resolved, cid)
        except Rejected:
            self._untake(token)
            raise
        except TemplateError as exc:
            self._untake(token)
            raise Rejected(400, "InvalidParameters", str(exc)) from None
        except (RegistryError, PolicyError, ValueError) as exc:
            self._untake(token)
            raise Rejected(400, "InvalidRequest", str(exc)) from None
        return {"deviceConfiguration": dict(resolved.device_configuration), "thingName": thing}
