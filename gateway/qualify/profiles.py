"""The server certificates the qualification endpoint presents, made from the project's own PKI. Pure.

    good        issued by the home's issuing CA for the endpoint's names: a device must accept it
    wrong-name  issued by the same CA, valid, but for another host name only (``wrong-host.invalid``)
    untrusted   for the right names, from a fresh CA the device has never seen
    expired     for the right names, by the home's CA, valid for one day a month ago (made with an injected clock)
    large       the good certificate padded with subject alternative names to ``large_bytes`` of DER
    legacy      the good certificate on an endpoint that speaks only TLS 1.0 and 1.1

Keys are fresh for every run (of the issuing CA's key type, so an RSA-only device meets an RSA server) and exist
only in memory and in the run's private directory (see :mod:`gateway.qualify.tls`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.authority import CertificateAuthority, build_root_ca
from certs.keys import KeyType, generate_private_key, private_key_pem

__all__ = ["PROFILES", "ServerProfile", "ServerProfiles", "WRONG_NAME"]

WRONG_NAME = "wrong-host.invalid"
DEFAULT_LARGE_BYTES = 8192

PROFILES = {
    "good": "valid, issued by the home's CA for the endpoint's names",
    "wrong-name": f"valid, issued by the home's CA, but only for {WRONG_NAME}",
    "untrusted": "for the endpoint's names, from a CA the device was never given",
    "expired": "for the endpoint's names, by the home's CA, expired",
    "large": "the valid certificate enlarged with subject alternative names",
    "legacy": "the valid certificate on an endpoint that speaks only TLS 1.0 and TLS 1.1",
}


@dataclasses.dataclass(frozen=True, slots=True)
class ServerProfile:
    name: str
    description: str
    certificate: x509.Certificate
    chain_pem: bytes                   # leaf first, then the CA that issued it when it is an intermediate
    key_pem: bytes = dataclasses.field(repr=False)
    legacy_tls: bool = False

    @property
    def der_size(self) -> int:
        return len(self.certificate.public_bytes(serialization.Encoding.DER))

    @property
    def chain_size(self) -> int:
        """Bytes of DER the certificate message carries (every certificate of the chain)."""
        return sum(len(c.public_bytes(serialization.Encoding.DER))
                   for c in x509.load_pem_x509_certificates(self.chain_pem))

    def describe(self) -> str:
        cert = self.certificate
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        shown = [str(n.value) for n in names][:4]
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        return (f"{self.name}: {self.description}; SAN {', '.join(shown)}{more}; valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                f"issuer {cert.issuer.rfc4514_string()}; chain {self.chain_size} bytes")


def _key_type_of(ca: CertificateAuthority) -> KeyType:
    key = ca.key
    if isinstance(key, rsa.RSAPrivateKey):
        return KeyType.RSA_2048 if key.key_size <= 2048 else KeyType.RSA_3072
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return KeyType.EC_P384
    return KeyType.EC_P256


class ServerProfiles:
    """Builds each profile on first use for one run: ``profiles.get("expired")``."""

    def __init__(self, issuer: CertificateAuthority, names: Sequence[str], *, now: dt.datetime,
                 key_type: KeyType | str | None = None) -> None:
        if not names:
            raise ValueError("the endpoint needs at least one name for its certificate")
        self.issuer = issuer
        self.names = list(dict.fromkeys(names))
        self.now = now
        self.key_type = KeyType(key_type) if key_type else _key_type_of(issuer)
        self._built: dict[tuple[str, int], ServerProfile] = {}
        self._untrusted: CertificateAuthority | None = None

    def get(self, name: str, *, large_bytes: int = DEFAULT_LARGE_BYTES) -> ServerProfile:
        if name not in PROFILES:
            raise ValueError(f"unknown server profile {name!r}; known: {', '.join(PROFILES)}")
        key = (name, large_bytes if name == "large" else 0)
        profile = self._built.get(key)
        if profile is None:
            profile = self._build(name, large_bytes)
            self._built[key] = profile
        return profile

    def _leaf(self, ca: CertificateAuthority, names: Sequence[str], *, now: dt.datetime, days: int) -> tuple:
        key = generate_private_key(self.key_type)
        cert = ca.issue_server(key, names, now=now, days=days)
        return cert, ca.pem_with_chain(cert), private_key_pem(key)

    def _build(self, name: str, large_bytes: int) -> ServerProfile:
        now = self.now
        description = PROFILES[name]
        if name in ("good", "legacy"):
            cert, chain, key = self._leaf(self.issuer, self.names, now=now, days=7)
            return ServerProfile(name, description, cert, chain, key, legacy_tls=name == "legacy")
        if name == "wrong-name":
            cert, chain, key = self._leaf(self.issuer, [WRONG_NAME], now=now, days=7)
            return ServerProfile(name, description, cert, chain, key)
        if name == "untrusted":
            if self._untrusted is None:
                self._untrusted = build_root_ca(generate_private_key(self.key_type),
                                                "iotgate Qualification Untrusted CA", now=now, days=7)
            cert, chain, key = self._leaf(self._untrusted, self.names, now=now, days=7)
            return ServerProfile(name, description, cert, chain, key)
        if name == "expired":
            cert, chain, key = self._leaf(self.issuer, self.names, now=now - dt.timedelta(days=30), days=1)
            return ServerProfile(name, description, cert, chain, key)
        return self._large(large_bytes)

    def _large(self, target: int) -> ServerProfile:
        """Pad the subject alternative names until the leaf's DER reaches ``target`` bytes."""
        names = list(self.names)
        count = 0
        while True:
            padding = [f"pad-{i:04d}.qualify.invalid" for i in range(count)]
            cert, chain, key = self._leaf(self.issuer, names + padding, now=self.now, days=7)
            size = len(cert.public_bytes(serialization.Encoding.DER))
            if size >= target or count > 20_000:
                return ServerProfile("large", f"{PROFILES['large']} ({size} bytes of DER)", cert, chain, key)
            per_name = 30
            count += max(1, (target - size) // per_name + 1)
