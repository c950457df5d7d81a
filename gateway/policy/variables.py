"""Values of policy variables and condition keys for one identity, client id and source address.

Names compare case-insensitively (a thing attribute name inside ``[...]`` keeps its case).
Token claims (``${jwt:<claim>}``, from a ``jwt`` custom authorizer) are identity values like the certificate's;
they are always substituted, and match literally.
A variable with no value is *unresolved*: the ``${...}`` text stays in the policy and matches only
itself, literally. Certificate values holding ``* ? + # $`` or longer than 1024 characters are not
substituted (AWS IoT rule); the client id, source address and thing values always are, and their
``*``/``?`` characters match literally.
"""

from __future__ import annotations

import re
from typing import Mapping

from gateway.policy.model import DN_FIELDS, SAN_FIELDS, Identity, ThingInfo

CERT_PREFIX = "iot:certificate."
THING_PREFIX = "iot:connection.thing."
ATTR_PREFIX = "iot:connection.thing.attributes["
CLAIM_PREFIX = "jwt:"

MAX_CERT_VALUE = 1024
MAX_CERT_ARRAY = 5
_UNSUBSTITUTABLE = re.compile(r"[*?+#$]")

# Keys whose value depends on the request beyond client id and source address.
REQUEST_KEYS = frozenset({"iot:connectattributes", "iot:lastwilltopic"})
CLIENT_KEYS = frozenset(
    {
        "iot:clientid",
        "iot:connection.thing.thingname",
        "iot:connection.thing.thingtypename",
        "iot:connection.thing.isattached",
    }
)
SOURCE_KEYS = frozenset({"aws:sourceip"})
OTHER_KNOWN_KEYS = frozenset({"iot:certificateid", "iot:domainname"})


def certificate_keys(identity: Identity) -> dict[str, tuple[str, ...]]:
    """Every certificate condition key with a value, lower-cased name -> values (arrays cut to five)."""
    keys: dict[str, tuple[str, ...]] = {}
    available: list[str] = []

    def add(base: str, display: str, values: tuple[str, ...]) -> None:
        values = values[:MAX_CERT_ARRAY]
        if not values:
            return
        available.append(display)
        keys[base] = (values[0],)
        keys[base + ".list"] = values
        for i, v in enumerate(values):
            keys[f"{base}.{i}"] = (v,)

    for scope, dn, alt in (("Subject", identity.subject, identity.san), ("Issuer", identity.issuer, identity.issuer_san)):
        for name in DN_FIELDS:
            if name in dn:
                add(f"iot:certificate.{scope.lower()}.{name.lower()}", f"iot:Certificate.{scope}.{name}", tuple(dn[name]))
        for name in SAN_FIELDS:
            if name in alt:
                add(
                    f"iot:certificate.{scope.lower()}.alternativename.{name.lower()}",
                    f"iot:Certificate.{scope}.AlternativeName.{name}",
                    tuple(alt[name]),
                )
    if identity.serial_number:
        keys["iot:certificate.serialnumber"] = (identity.serial_number,)
        available.append("iot:Certificate.SerialNumber")
    keys["iot:certificate.availablekeys"] = tuple(available)
    if identity.certificate_id:
        keys["iot:certificateid"] = (identity.certificate_id,)
    for name, values in identity.claims.items():
        keys[CLAIM_PREFIX + name] = values
    return keys


def is_multivalued(key: str) -> bool:
    return key.endswith(".list") or key in ("iot:certificate.availablekeys", "iot:connectattributes")


def is_known_key(key: str) -> bool:
    """Whether ``key`` (normalized) names a condition key / variable AWS IoT defines."""
    if key in CLIENT_KEYS or key in SOURCE_KEYS or key in REQUEST_KEYS or key in OTHER_KNOWN_KEYS:
        return True
    if key.startswith(ATTR_PREFIX) and key.endswith("]") and len(key) > len(ATTR_PREFIX) + 1:
        return True
    if key in ("iot:certificate.serialnumber", "iot:certificate.availablekeys"):
        return True
    if key.startswith(CLAIM_PREFIX) and len(key) > len(CLAIM_PREFIX):
        return True
    m = re.fullmatch(r"iot:certificate\.(subject|issuer)\.(.+?)(\.list|\.\d+)?", key)
    if not m:
        return False
    name = m.group(2)
    if name in {f.lower() for f in DN_FIELDS}:
        return True
    return name.startswith("alternativename.") and name[len("alternativename.") :] in {f.lower() for f in SAN_FIELDS}


def depends_on_client(key: str) -> bool:
    return key in CLIENT_KEYS or key.startswith(ATTR_PREFIX)


class Scope:
    """Lookup of variables and condition keys for one identity + client id + source address."""

    __slots__ = ("cert", "client_id", "source_ip", "thing")

    def __init__(self, cert: Mapping[str, tuple[str, ...]], things: Mapping[str, ThingInfo], client_id, source_ip) -> None:
        self.cert = cert
        self.client_id = client_id if isinstance(client_id, str) else None
        self.source_ip = source_ip if isinstance(source_ip, str) else None
        self.thing = things.get(self.client_id) if self.client_id is not None else None

    def key(self, key: str) -> tuple[str, ...] | None:
        """Condition-key values, or None when the key is absent from the request context."""
        if key == "iot:clientid":
            return None if self.client_id is None else (self.client_id,)
        if key == "aws:sourceip":
            return None if self.source_ip is None else (self.source_ip,)
        if key.startswith(THING_PREFIX):
            if key == "iot:connection.thing.isattached":
                return ("true",) if self.thing is not None else ("false",)
            thing = self.thing
            if thing is None:
                return None
            if key == "iot:connection.thing.thingname":
                return (thing.name,)
            if key == "iot:connection.thing.thingtypename":
                return None if thing.thing_type is None else (thing.thing_type,)
            if key.startswith(ATTR_PREFIX) and key.endswith("]"):
                value = thing.attributes.get(key[len(ATTR_PREFIX) : -1])
                return None if value is None else (value,)
            return None
        return self.cert.get(key)

    def variable(self, name: str) -> str | None:
        """Substitution text for ``${name}`` (name normalized), or None to leave it unresolved."""
        if is_multivalued(name):
            return None
        values = self.key(name)
        if not values:
            return None
        if len(values) > 1 and name.startswith(CLAIM_PREFIX):
            return None  # a list claim has no one value to substitute: use it in a ForAnyValue condition
        value = values[0]
        if name.startswith(CERT_PREFIX) and (len(value) > MAX_CERT_VALUE or _UNSUBSTITUTABLE.search(value)):
            return None
        return value
