"""Attackers without certificates: bad tokens for a custom authorizer and bad SigV4 signatures on MQTT over
WebSocket, against the gateway's token listener.

The run makes its own token world (:class:`TokenWorld`) in the local registry, as a team would for an app or a
phone: an identity provider's RSA key and its JWKS file, a ``jwt`` authorizer that trusts it (audience
``iotgate-fleet-run``, token signing on, with a signing key of its own); all bound to a
policy that lets ``atk-*`` client ids connect and nothing else; and one SigV4 access key per signature attacker
(two attackers signing in the same second with one key would send the same signature). They are deleted when
the run ends.

Every attack first connects once with a *valid* credential of the same kind (a fresh token, a fresh signature):
a refusal of the bad one is evidence only from a target that accepted the good one. Then:

* ``expired-token``: a JWT whose ``exp`` passed an hour ago (beyond any leeway);
* ``foreign-audience-token``: a JWT signed by the same identity provider for another audience;
* ``replayed-signature``: the signed WebSocket URL of the accepted control connection, used again;
* ``wrong-secret-signature``: the access key id signed with a secret that is not its own.

What came back is classified by :func:`devices.evidence.classify_token_connect`: a CONNACK 0 got in; a CONNACK
refusal, an HTTP 401/403 on the upgrade, a TLS alert or a close after CONNECT is a refusal; no answer is
inconclusive.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import secrets
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devices.evidence import classify_token_connect
from devices.report import Outcome
from devices.scenario import ATTACKER_KINDS
from devices.tokens import (ConnectResult, custom_auth_username, sign_token, sigv4_target, try_connect,
                            try_connect_blocking)
from certs.errors import IotgateError
from certs.keys import write_private_file
from gateway.auth.secrets import SecretBox
from gateway.registry import NotFound, Registry

JWT_KINDS = ("expired-token", "foreign-audience-token")
SIGV4_KINDS = ("replayed-signature", "wrong-secret-signature")
TOKEN_ATTACKER_KINDS: dict[str, str] = {k: ATTACKER_KINDS[k] for k in JWT_KINDS + SIGV4_KINDS}  # kind -> what
AUTHORIZER = "iotgate-fleet-run-jwt"
POLICY = "iotgate-fleet-run-token"
AUDIENCE = "iotgate-fleet-run"
ISSUER = "https://idp.fleet-run.iotgate.local"
TOKEN_KEY = "token"
KEY_IDENTITY = "iotgate-fleet-run"
# what a token or key principal of the run may do: connect as an attacker, nothing more
POLICY_DOCUMENT = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": ["arn:aws:iot:*:*:client/atk-*", "arn:aws:iot:*:*:client/iotgate-loadtest-*"]}]})


class TokenWorldError(IotgateError):
    """The token attackers' credentials are missing or unreadable."""


# the run's legitimate devices without certificates: the rights of the built-in certificate policy
DEVICE_AUTHORIZER = "iotgate-fleet-run-devices-jwt"
DEVICE_KEY_IDENTITY = "iotgate-fleet-run-devices"
DEVICE_TOKEN_POLICY = ("iotgate-fleet-run-token-devices", json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${jwt:sub}"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/dt/${jwt:sub}/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/cmd/${jwt:sub}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/cmd/${jwt:sub}/*"}]}))


def device_key_policy(name: str, prefix: str) -> tuple[str, str]:
    """A SigV4 principal has no claims: its own client id (``prefix*``) names its topics (one key per device)."""
    return name, json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"arn:aws:iot:*:*:client/{prefix}*"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/dt/${iot:ClientId}/*"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/cmd/${iot:ClientId}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/cmd/${iot:ClientId}/*"}]})


DEVICE_KEY_POLICY = device_key_policy("iotgate-fleet-run-key-devices", "sim-")


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclasses.dataclass
class TokenWorld:
    """The run's identity provider, authorizer and access key (see the module docstring)."""

    registry: Registry | None        # None: loaded from files (a load-test worker), no keys to add
    box: SecretBox | None
    idp: rsa.RSAPrivateKey
    signer: rsa.RSAPrivateKey
    region: str = "us-east-1"
    authorizer: str = AUTHORIZER
    identity: str = KEY_IDENTITY
    keys: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)   # member -> (key id, secret)
    key_policy: str = POLICY

    @classmethod
    def create(cls, registry: Registry, home: Path, scratch: Path, *, region: str = "us-east-1",
               authorizer: str = AUTHORIZER, identity: str = KEY_IDENTITY,
               policy: tuple[str, str] = (POLICY, POLICY_DOCUMENT),
               key_policy: tuple[str, str] | None = None) -> TokenWorld:
        """Register the run's authorizer and policy (replacing an authorizer and keys a crashed run left)."""
        idp, signer = _rsa(), _rsa()
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp.public_key()))
        jwk["kid"] = "fleet-run-1"
        jwks = scratch / f"{authorizer}-jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        public = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        cls.retire_leftovers(registry, authorizer, identity)
        key_policy = key_policy or policy
        for name, document in {policy, key_policy}:
            try:
                registry.get_policy(name)
            except NotFound:
                registry.create_policy(name, document)
        registry.create_authorizer(authorizer, "jwt", config={"jwks_file": str(jwks), "issuer": ISSUER,
                                                              "audience": AUDIENCE},
                                   token_key_name=TOKEN_KEY, signing_keys={"run": public}, policies=[policy[0]])
        return cls(registry, SecretBox.load(home, create=True), idp, signer, region, authorizer, identity,
                   key_policy=key_policy[0])

    def add_key(self, member: str) -> tuple[str, str]:
        """A long-term access key of its own for one signature attacker: (access key id, secret)."""
        akid = "AKIA" + base64.b32encode(os.urandom(10)).decode("ascii")
        secret = base64.b64encode(os.urandom(30)).decode("ascii")
        if self.registry is None or self.box is None:
            raise ValueError("this token world was loaded from files: keys are added where it was created")
        self.registry.create_access_key(akid, self.identity, self.box.seal(akid, secret), policies=[self.key_policy])
        self.keys[member] = (akid, secret)
        return akid, secret

    @staticmethod
    def retire_leftovers(registry: Registry, authorizer: str = AUTHORIZER, identity: str = KEY_IDENTITY) -> None:
        for key in registry.list_access_keys(identity):
            registry.delete_access_key(key.access_key_id)
        try:
            registry.delete_authorizer(authorizer)
        except NotFound:
            pass

    def retire(self, registry: Registry) -> None:
        """Delete what :meth:`create` and :meth:`add_key` registered (the policy stays, attached to nothing)."""
        self.retire_leftovers(registry, self.authorizer, self.identity)

    # ------------------------------------------------------------------ files (load-test workers)

    def save(self, directory: Path) -> None:
        """The credentials for processes that use them without the registry: keys and secrets in 0600 files."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = serialization.Encoding.PEM
        fmt, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        write_private_file(directory / "idp.key", self.idp.private_bytes(pem, fmt, none))
        write_private_file(directory / "signer.key", self.signer.private_bytes(pem, fmt, none))
        write_private_file(directory / "world.json", json.dumps(
            {"authorizer": self.authorizer, "identity": self.identity, "region": self.region,
             "keys": {m: list(k) for m, k in self.keys.items()}}).encode())

    @classmethod
    def load(cls, directory: Path) -> TokenWorld:
        try:
            meta = json.loads((directory / "world.json").read_text())
            idp = serialization.load_pem_private_key((directory / "idp.key").read_bytes(), None)
            signer = serialization.load_pem_private_key((directory / "signer.key").read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise TokenWorldError(f"{directory}: the token attackers' credentials cannot be read ({exc}); they are "
                                  "made by the run that starts the attackers") from None
        return cls(None, None, idp, signer, meta["region"], meta["authorizer"], meta["identity"],
                   {m: (k[0], k[1]) for m, k in meta["keys"].items()})

    # ------------------------------------------------------------------ credentials

    def token(self, sub: str, now: dt.datetime, *, audience: str = AUDIENCE, lifetime: int = 600) -> str:
        """A JWT from the run's identity provider; ``lifetime`` may be negative (already expired)."""
        ts = int(now.timestamp())
        issued = min(ts, ts + lifetime - 60)
        return jwt.encode({"sub": sub, "iss": ISSUER, "aud": audience, "iat": issued, "exp": ts + lifetime},
                          self.idp, algorithm="RS256", headers={"kid": "fleet-run-1"})

    def sdk_auth(self, token: str) -> dict:
        """The token as the AWS IoT Device SDK's ``direct_with_custom_authorizer`` takes it."""
        return {"auth_authorizer_name": self.authorizer, "auth_authorizer_signature": sign_token(self.signer, token),
                "auth_token_key_name": TOKEN_KEY, "auth_token_value": token}

    def username(self, token: str) -> str:
        """The CONNECT username of the AWS IoT Device SDK's custom-authorizer connection, signed."""
        return custom_auth_username(self.authorizer, TOKEN_KEY, token, sign_token(self.signer, token))

    def signed_target(self, member: str, now: dt.datetime, *, secret: str | None = None,
                      host: str = "localhost") -> str:
        akid, own = self.keys[member]
        return sigv4_target(host, akid, secret or own, self.region, now)


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One connection of an attack: a custom-authorizer username (ALPN ``mqtt``) or a signed WebSocket target."""

    username: str | None = None
    target: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AttackPlan:
    """What one attacker does: the control connection that must get in, then the one that must not."""

    control: Attempt
    bad: Attempt
    control_failed: str      # why a refused control makes the attack inconclusive
    what: str                # the bad attempt, for the report


def plan_attack(kind: str, member: str, world: TokenWorld, now: dt.datetime) -> AttackPlan:
    """The two connections of ``kind`` (pure but for the keys' randomness)."""
    if kind in JWT_KINDS:
        bad = (world.token(member, now, lifetime=-3600) if kind == "expired-token"
               else world.token(member, now, audience="another-service"))
        return AttackPlan(Attempt(username=world.username(world.token(member, now))),
                          Attempt(username=world.username(bad)),
                          "a valid token from the same identity provider was not accepted either",
                          "token expired an hour ago" if kind == "expired-token"
                          else "token issued for audience another-service")
    if kind == "replayed-signature":
        target = world.signed_target(member, now)
        return AttackPlan(Attempt(target=target), Attempt(target=target),
                          "the first use of the signature was not accepted, so there is nothing to replay",
                          "the same signed URL again")
    if kind == "wrong-secret-signature":
        wrong = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
        return AttackPlan(Attempt(target=world.signed_target(member, now)),
                          Attempt(target=world.signed_target(member, now, secret=wrong)),
                          "a signature with the key's own secret was not accepted either",
                          f"signed with a wrong secret for {world.keys[member][0]}")
    raise ValueError(f"unknown token attacker kind {kind!r}")


def judge(plan: AttackPlan, control: ConnectResult, bad: ConnectResult | None) -> tuple[Outcome, str]:
    """The attack's evidence: inconclusive unless the control got in; then what the bad attempt met."""
    if not control.accepted:
        _, detail = classify_token_connect(control)
        return Outcome.INCONCLUSIVE, f"{plan.control_failed} ({detail}): the refusal would prove nothing"
    assert bad is not None
    outcome, detail = classify_token_connect(bad)
    return outcome, f"{plan.what}: {detail}"


async def token_attack(kind: str, member: str, world: TokenWorld, *, host: str, port: int, ca_file: str,
                       timeout: float, now: dt.datetime) -> tuple[Outcome, str]:
    """One token or signature attacker against the token listener at ``host:port`` (asyncio)."""
    plan = plan_attack(kind, member, world, now)

    async def attempt(a: Attempt) -> ConnectResult:
        return await try_connect(host, port, Path(ca_file), client_id=member, username=a.username,
                                 websocket_target=a.target, timeout=timeout)

    control = await attempt(plan.control)
    return judge(plan, control, await attempt(plan.bad) if control.accepted else None)


def token_attack_blocking(kind: str, member: str, world: TokenWorld, *, host: str, port: int, ca_file: str,
                          timeout: float, now: dt.datetime) -> tuple[Outcome, str]:
    """The same with blocking sockets (cooperative under gevent: the load tests)."""
    plan = plan_attack(kind, member, world, now)

    def attempt(a: Attempt) -> ConnectResult:
        return try_connect_blocking(host, port, Path(ca_file), client_id=member, username=a.username,
                                    websocket_target=a.target, timeout=timeout)

    control = attempt(plan.control)
    return judge(plan, control, attempt(plan.bad) if control.accepted else None)
