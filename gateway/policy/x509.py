"""Identity fields read from a ``cryptography`` X.509 certificate (pure: no files, no sockets)."""

from __future__ import annotations

import hashlib
from typing import Any


def identity_fields(cert: Any) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtensionOID, NameOID

    names = {
        NameOID.COUNTRY_NAME: "Country",
        NameOID.ORGANIZATION_NAME: "Organization",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "OrganizationalUnit",
        NameOID.DN_QUALIFIER: "DistinguishedNameQualifier",
        NameOID.STATE_OR_PROVINCE_NAME: "State",
        NameOID.COMMON_NAME: "CommonName",
        NameOID.SERIAL_NUMBER: "SerialNumber",
        NameOID.TITLE: "Title",
        NameOID.SURNAME: "Surname",
        NameOID.GIVEN_NAME: "GivenName",
        NameOID.INITIALS: "Initials",
        NameOID.PSEUDONYM: "Pseudonym",
        NameOID.GENERATION_QUALIFIER: "GenerationQualifier",
    }

    def dn(name: x509.Name) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for attr in name:
            field = names.get(attr.oid)
            if field is not None:
                value = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
                out.setdefault(field, []).append(value)
        return out

    def directory(name: x509.Name) -> str:
        # AWS IoT shows directory names most-specific first with lower-case attribute types.
        parts = []
        for rdn in reversed(list(name.rdns)):
            for attr in rdn:
                short = attr.rfc4514_string().split("=", 1)
                parts.append(short[0].lower() + "=" + short[1])
        return ",".join(parts)

    def alt_names(ext_oid) -> dict[str, list[str]]:
        try:
            ext = cert.extensions.get_extension_for_oid(ext_oid).value
        except x509.ExtensionNotFound:
            return {}
        out: dict[str, list[str]] = {}
        for gn in ext:
            if isinstance(gn, x509.DNSName):
                out.setdefault("DNSName", []).append(gn.value)
            elif isinstance(gn, x509.RFC822Name):
                out.setdefault("RFC822Name", []).append(gn.value)
            elif isinstance(gn, x509.UniformResourceIdentifier):
                out.setdefault("UniformResourceIdentifier", []).append(gn.value)
            elif isinstance(gn, x509.IPAddress):
                out.setdefault("IPAddress", []).append(str(gn.value))
            elif isinstance(gn, x509.DirectoryName):
                out.setdefault("DirectoryName", []).append(directory(gn.value))
        return out

    der = cert.public_bytes(Encoding.DER)
    not_before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return {
        "certificate_id": hashlib.sha256(der).hexdigest(),
        "subject": dn(cert.subject),
        "issuer": dn(cert.issuer),
        "serial_number": str(cert.serial_number),
        "san": alt_names(ExtensionOID.SUBJECT_ALTERNATIVE_NAME),
        "issuer_san": alt_names(ExtensionOID.ISSUER_ALTERNATIVE_NAME),
        "not_before": not_before,
        "not_after": not_after,
    }
