"""The home's own CAs by name, for a flows file's ``ca = ["issuing"]``: issuing, root, upstream."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

CA_FILES = {"issuing": "issuing-ca.pem", "root": "root-ca.pem", "upstream": "upstream-ca.pem"}


def home_ca_aliases(home: Path) -> dict[str, set[str]]:
    """alias -> {certificate id (SHA-256 of the DER), subject DN}; a CA file missing here has no alias."""
    out: dict[str, set[str]] = {}
    for alias, name in CA_FILES.items():
        try:
            cert = x509.load_pem_x509_certificate((home / name).read_bytes())
        except (OSError, ValueError):
            continue
        out[alias] = {hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(), cert.subject.rfc4514_string()}
    return out
