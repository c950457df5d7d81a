"""Values the registry hands out, and the checks applied to what it is given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .errors import InvalidValue

CERTIFICATE_STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "PENDING_ACTIVATION")
CA_STATUSES = ("ACTIVE", "INACTIVE")
AUTHORIZER_STATUSES = ("ACTIVE", "INACTIVE")
AUTHORIZER_KINDS = ("jwt", "command")
ACCESS_KEY_STATUSES = ("ACTIVE", "INACTIVE")

MAX_POLICY_VERSIONS = 5
MAX_POLICIES_PER_CERTIFICATE = 10
MAX_POLICIES_PER_PRINCIPAL = 10  # authorizers and access keys, as certificates
MIN_ID_PREFIX = 8

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_THING_TYPE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
_ATTR_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
_ATTR_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
_AUTHORIZER_NAME = re.compile(r"[\w=,@-]{1,128}", re.ASCII)  # AWS IoT's CreateAuthorizer pattern
_IDENTITY_NAME = re.compile(r"[a-zA-Z0-9:_.@-]{1,128}")
_ACCESS_KEY_ID = re.compile(r"(AKIA|ASIA)[A-Z2-7]{16}")
_TOKEN_KEY_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")  # AWS IoT's tokenKeyName pattern
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Thing:
    name: str
    thing_type: str | None
    attributes: dict[str, str] = field(hash=False)
    created_at: datetime
    version: int = 1


@dataclass(frozen=True, slots=True)
class CA:
    ca_id: str
    pem: str
    subject: str
    status: str
    auto_registration: bool
    is_own: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Certificate:
    certificate_id: str
    pem: str
    serial_number: str
    subject_cn: str
    ca_id: str | None
    status: str
    not_before: datetime
    not_after: datetime
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    default_version_id: int
    document: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    policy_name: str
    version_id: int
    document: str
    is_default: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Authorizer:
    """A custom authorizer (AWS IoT's CreateAuthorizer): how a token is checked and what it may do.

    ``signing_keys`` maps key names to token-signing public keys (PEM); ``config`` is the kind's settings
    (checked by ``gateway.auth.authorizers``); ``policies`` the registry policies a ``jwt`` authorizer grants.
    """

    name: str
    kind: str
    status: str
    signing_disabled: bool
    token_key_name: str | None
    signing_keys: dict[str, str] = field(hash=False)
    config: dict[str, Any] = field(hash=False)
    is_default: bool
    created_at: datetime
    updated_at: datetime
    policies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessKey:
    """A SigV4 access key issued to a named identity. ``sealed_secret`` is the secret encrypted with the home's
    key-encryption key (never the secret itself); a temporary key has a session token (stored hashed) and an
    expiry."""

    access_key_id: str
    identity: str
    status: str
    sealed_secret: str = field(repr=False)
    session_token_sha256: str | None = field(repr=False)
    expires_at: datetime | None
    created_at: datetime
    policies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProvisioningTemplate:
    """A provisioning template (AWS IoT's CreateProvisioningTemplate): FLEET_PROVISIONING or JITP. ``version``
    goes up with each new body."""

    name: str
    template_type: str
    body: str
    description: str
    enabled: bool
    role_arn: str | None
    pre_provisioning_hook: dict[str, str] | None = field(hash=False)
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProvisionItem:
    """One device of a batch: a new thing, its new certificate, and the policies to attach."""

    thing: str
    certificate_id: str
    pem: str
    serial_number: str
    subject_cn: str
    ca_id: str | None
    not_before: datetime
    not_after: datetime
    policies: tuple[str, ...]
    thing_type: str | None = None
    attributes: dict[str, str] | None = field(default=None, hash=False)
    status: str = "ACTIVE"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the gateway needs, read in one consistent transaction at `counter`."""

    counter: int
    things: dict[str, Thing] = field(hash=False)
    cas: dict[str, CA] = field(hash=False)
    certificates: dict[str, Certificate] = field(hash=False)
    policies: dict[str, Policy] = field(hash=False)
    cert_policies: dict[str, tuple[str, ...]] = field(hash=False)
    cert_things: dict[str, tuple[str, ...]] = field(hash=False)
    authorizers: dict[str, Authorizer] = field(default_factory=dict, hash=False)
    access_keys: dict[str, AccessKey] = field(default_factory=dict, hash=False)


# --------------------------------------------------------------------------- checks


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"{what} must be a string, got {type(value).__name__}")
    return value


def _short(value: str, n: int = 40) -> str:
    return value if len(value) <= n else value[:n] + "..."


def thing_name(value: Any) -> str:
    value = _text(value, "thing name")
    if not _THING_NAME.fullmatch(value):
        raise InvalidValue(
            f"thing name {_short(value)!r} is not valid: use 1 to 128 characters among "
            "letters, digits, ':', '_' and '-'"
        )
    return value


def thing_type(value: Any) -> str | None:
    if value is None:
        return None
    value = _text(value, "thing type")
    if not _THING_TYPE.fullmatch(value):
        raise InvalidValue(
            f"thing type {_short(value)!r} is not valid: use 1 to 128 characters among "
            "letters, digits, ':', '_' and '-'"
        )
    return value


def attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidValue(f"thing attributes must be a mapping of names to strings, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ATTR_NAME.fullmatch(k):
            raise InvalidValue(
                f"thing attribute name {_short(str(k))!r} is not valid: use 1 to 128 characters among "
                "letters, digits and _.,@/:#-"
            )
        if not isinstance(v, str) or not _ATTR_VALUE.fullmatch(v):
            raise InvalidValue(
                f"value of thing attribute {k!r} is not valid: it must be a string of at most 800 "
                "characters among letters, digits and _.,@/:#=[]-"
            )
        out[k] = v
    if len(out) > 50:
        raise InvalidValue(f"a thing has at most 50 attributes, {len(out)} were given")
    return out


def policy_name(value: Any) -> str:
    value = _text(value, "policy name")
    if not _POLICY_NAME.fullmatch(value):
        raise InvalidValue(
            f"policy name {_short(value)!r} is not valid: use 1 to 128 characters among "
            "letters, digits and _+=,.@-"
        )
    return value


def authorizer_name(value: Any) -> str:
    value = _text(value, "authorizer name")
    if not _AUTHORIZER_NAME.fullmatch(value):
        raise InvalidValue(
            f"authorizer name {_short(value)!r} is not valid: use 1 to 128 characters among letters, digits and _=,@-"
        )
    return value


def identity_name(value: Any) -> str:
    value = _text(value, "identity name")
    if not _IDENTITY_NAME.fullmatch(value):
        raise InvalidValue(
            f"identity name {_short(value)!r} is not valid: use 1 to 128 characters among letters, digits and :_.@-"
        )
    return value


def access_key_id(value: Any) -> str:
    value = _text(value, "access key id").strip()
    if not _ACCESS_KEY_ID.fullmatch(value):
        raise InvalidValue(
            f"access key id {_short(value)!r} is not valid: it is AKIA or ASIA and 16 characters among A-Z and 2-7"
        )
    return value


def token_key_name(value: Any) -> str | None:
    if value is None:
        return None
    value = _text(value, "token key name")
    if not _TOKEN_KEY_NAME.fullmatch(value):
        raise InvalidValue(
            f"token key name {_short(value)!r} is not valid: use 1 to 128 characters among letters, digits, _ and -"
        )
    return value


def document(value: Any) -> str:
    value = _text(value, "policy document")
    if not value.strip():
        raise InvalidValue("policy document is empty")
    return value


def hex_id(value: Any, what: str) -> str:
    """A full 64-hex id (SHA-256 of DER), normalized to lower case."""
    value = _text(value, what).strip().lower()
    if not _HEX64.fullmatch(value):
        raise InvalidValue(f"{what} {_short(value)!r} is not valid: it is 64 hexadecimal characters (SHA-256 of the DER)")
    return value


def id_or_prefix(value: Any, what: str) -> str:
    """A full id or a prefix of at least MIN_ID_PREFIX hex characters, lower case."""
    value = _text(value, what).strip().lower()
    if not (MIN_ID_PREFIX <= len(value) <= 64 and _HEX.fullmatch(value)):
        raise InvalidValue(
            f"{what} {_short(value)!r} is not valid: give the 64 hexadecimal characters "
            f"or a unique prefix of at least {MIN_ID_PREFIX}"
        )
    return value


def serial(value: Any) -> str:
    """A serial number as lower-case hex without leading zeros (colons and 0x accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidValue(f"serial number {value} is negative")
        return format(value, "x")
    text = _text(value, "serial number").strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    if not _HEX.fullmatch(text) or len(text) > 64:
        raise InvalidValue(f"serial number {_short(str(value))!r} is not valid: give it in hexadecimal")
    return format(int(text, 16), "x")


def status(value: Any, allowed: tuple[str, ...], what: str) -> str:
    value = _text(value, what)
    up = value.strip().upper()
    if up not in allowed:
        raise InvalidValue(f"{what} {value!r} is not valid: use one of {', '.join(allowed)}")
    return up


def aware(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidValue(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(f"{what} {value.isoformat()} has no time zone: pass a timezone-aware datetime (UTC)")
    return value.astimezone(timezone.utc)


def text_field(value: Any, what: str) -> str:
    return _text(value, what)
