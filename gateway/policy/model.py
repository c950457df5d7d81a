"""Values the engine reads and returns: who asks (Identity), what is asked (Request), the answer (Decision)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple

# Distinguished-name attributes AWS IoT exposes as iot:Certificate.{Subject,Issuer}.<Name>.
DN_FIELDS: tuple[str, ...] = (
    "Country",
    "Organization",
    "OrganizationalUnit",
    "DistinguishedNameQualifier",
    "State",
    "CommonName",
    "SerialNumber",
    "Title",
    "Surname",
    "GivenName",
    "Initials",
    "Pseudonym",
    "GenerationQualifier",
)
# Alternative-name kinds exposed as iot:Certificate.{Subject,Issuer}.AlternativeName.<Kind>.
SAN_FIELDS: tuple[str, ...] = (
    "RFC822Name",
    "DNSName",
    "DirectoryName",
    "UniformResourceIdentifier",
    "IPAddress",
)

_DN_ALIASES = {name.lower(): name for name in DN_FIELDS}
_DN_ALIASES.update(
    {
        "c": "Country",
        "o": "Organization",
        "ou": "OrganizationalUnit",
        "dnqualifier": "DistinguishedNameQualifier",
        "st": "State",
        "cn": "CommonName",
        "sn": "Surname",
        "gn": "GivenName",
    }
)
_SAN_ALIASES = {name.lower(): name for name in SAN_FIELDS}
_SAN_ALIASES.update(
    {"dns": "DNSName", "email": "RFC822Name", "uri": "UniformResourceIdentifier", "ip": "IPAddress", "dirname": "DirectoryName"}
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _values(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _name_map(raw: Mapping[str, Any] | None, aliases: Mapping[str, str]) -> Mapping[str, tuple[str, ...]]:
    """Canonical AWS names for known fields (``CN`` -> ``CommonName``); other fields are kept as given
    but never become policy variables (AWS IoT exposes no Locality, for instance)."""
    if not raw:
        return _EMPTY
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        canonical = aliases.get(str(key).lower(), str(key))
        values = _values(value)
        if values:
            out[canonical] = out.get(canonical, ()) + values
    return MappingProxyType(out)


def _claim_value(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, (str, int, float)):
        return (str(value),)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                for v in value):
        return tuple(str(v) for v in value)
    return None  # objects and mixed lists are not policy values


def _claim_map(raw: Mapping[str, Any] | None) -> Mapping[str, tuple[str, ...]]:
    """Token claims as policy values, names lower-cased (variable names compare case-insensitively)."""
    if not raw:
        return _EMPTY
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        values = value if isinstance(value, tuple) and all(isinstance(v, str) for v in value) \
            else _claim_value(value)
        if values is not None:
            out[str(key).lower()] = values
    return MappingProxyType(out)


@dataclass(frozen=True, eq=False)
class ThingInfo:
    """A registry thing attached to the certificate."""

    name: str
    thing_type: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "attributes", MappingProxyType({str(k): str(v) for k, v in (self.attributes or {}).items()})
        )


@dataclass(frozen=True, eq=False)
class Identity:
    """The authenticated principal: one X.509 certificate and the things attached to it.

    ``subject``/``issuer`` map DN attribute names (``CommonName`` or ``CN`` ...) to their values in
    certificate order; ``san``/``issuer_san`` map alternative-name kinds (``DNSName`` ...) to values.
    ``serial_number`` is the value of ``iot:Certificate.SerialNumber``: AWS IoT uses the decimal form.
    ``things`` maps thing name -> ThingInfo for every thing attached to this certificate.
    ``claims`` are the verified claims of a token (a ``jwt`` custom authorizer), policy variables
    ``${jwt:<claim>}``: strings, numbers and booleans, or lists of them (multi-valued: conditions only).
    """

    certificate_id: str = ""
    subject: Mapping[str, Any] = field(default_factory=dict)
    issuer: Mapping[str, Any] = field(default_factory=dict)
    serial_number: str | None = None
    san: Mapping[str, Any] = field(default_factory=dict)
    issuer_san: Mapping[str, Any] = field(default_factory=dict)
    not_before: Any = None
    not_after: Any = None
    things: Mapping[str, ThingInfo] = field(default_factory=dict)
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "claims", _claim_map(self.claims))
        object.__setattr__(self, "subject", _name_map(self.subject, _DN_ALIASES))
        object.__setattr__(self, "issuer", _name_map(self.issuer, _DN_ALIASES))
        object.__setattr__(self, "san", _name_map(self.san, _SAN_ALIASES))
        object.__setattr__(self, "issuer_san", _name_map(self.issuer_san, _SAN_ALIASES))
        if self.serial_number is not None:
            object.__setattr__(self, "serial_number", str(self.serial_number))
        things: dict[str, ThingInfo] = {}
        for name, info in (self.things or {}).items():
            if isinstance(info, ThingInfo):
                things[str(name)] = info
            elif isinstance(info, Mapping):
                things[str(name)] = ThingInfo(
                    name=str(info.get("name", name)),
                    thing_type=info.get("thing_type"),
                    attributes=info.get("attributes") or {},
                )
            else:
                raise ValueError(f"things[{name!r}] must be a ThingInfo or a mapping")
        object.__setattr__(self, "things", MappingProxyType(things))

    @classmethod
    def from_certificate(cls, cert: Any, things: Mapping[str, ThingInfo] | Iterable[ThingInfo] | None = None) -> "Identity":
        """Build an Identity from a ``cryptography`` ``x509.Certificate`` (no I/O)."""
        from gateway.policy.x509 import identity_fields

        if things is not None and not isinstance(things, Mapping):
            things = {t.name: t for t in things}
        return cls(things=things or {}, **identity_fields(cert))


class _RequestFields(NamedTuple):
    action: str
    resource: str
    client_id: str | None
    source_ip: str | None
    connect_attributes: frozenset
    last_will_topic: str | None


class Request(_RequestFields):
    """One authorization question. ``resource`` is short (``topic/a/b``) or a full ARN.

    A Request is a hashable tuple of everything that varies per request, so it is its own cache key.
    """

    __slots__ = ()

    def __new__(
        cls,
        action: str,
        resource: str,
        client_id: str | None = None,
        source_ip: str | None = None,
        connect_attributes: Iterable[str] = frozenset(),
        last_will_topic: str | None = None,
    ) -> "Request":
        if type(connect_attributes) is not frozenset:
            connect_attributes = frozenset(connect_attributes or ())
        return _RequestFields.__new__(cls, action, resource, client_id, source_ip, connect_attributes, last_will_topic)


@dataclass(frozen=True, slots=True)
class DecidedBy:
    """A statement that decided: policy name and version, statement index (0-based) and its effect."""

    policy: str
    version: str
    statement_index: int
    effect: str


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed``; the statements that decided (empty for the default deny); evaluation errors."""

    allowed: bool
    decided_by: tuple[DecidedBy, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def explicit_deny(self) -> bool:
        return not self.allowed and any(d.effect == "Deny" for d in self.decided_by)

    @property
    def auth_decision(self) -> str:
        """``ALLOWED``, ``EXPLICIT_DENY`` or ``IMPLICIT_DENY`` as AWS IoT TestAuthorization names them."""
        if self.allowed:
            return "ALLOWED"
        return "EXPLICIT_DENY" if self.explicit_deny else "IMPLICIT_DENY"


DEFAULT_DENY = Decision(False)
