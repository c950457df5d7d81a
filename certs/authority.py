"""Certificate authorities and issuance: root -> issuing CA (pathlen 0) -> server, gateway client and device leaves.

Everything here is pure: time (``now``) and randomness (``serial``) can be passed in; nothing touches the disk.
Certificates follow what AWS IoT expects: random 128-bit serials, SKI/AKI, KU digitalSignature, EKU
clientAuth for devices and serverAuth for servers; the certificate id is the SHA-256 of the DER, hex.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import PKIError
from certs.keys import PrivateKey, check_device_key

DEFAULT_DEVICE_DAYS = 365
DEFAULT_SERVER_DAYS = 825
DEFAULT_ISSUING_DAYS = 5 * 365
DEFAULT_ROOT_DAYS = 10 * 365
# Backdating absorbs small clock differences between the issuer and the devices.
BACKDATE = dt.timedelta(minutes=5)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def random_serial() -> int:
    """A positive 128-bit random serial (never zero)."""
    return secrets.randbits(128) or 1


def certificate_id(cert: x509.Certificate) -> str:
    """AWS IoT's certificate id: SHA-256 of the DER encoding, 64 lower-case hex characters."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _name(cn: str, organization: str | None = None) -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA that can sign: its key, its certificate, and the chain above it (closest first)."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    # Derived once: every certificate this CA signs carries the same AKI and chain PEM, and the builders
    # below are immutable, so the part shared by a batch of leaves (same validity, same profile) is built once.
    _aki: x509.AuthorityKeyIdentifier = dataclasses.field(init=False, repr=False, compare=False)
    _pem: bytes = dataclasses.field(init=False, repr=False, compare=False)
    _templates: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key())
        object.__setattr__(self, "_aki", aki)
        object.__setattr__(self, "_pem", cert_pem(self.certificate))
        object.__setattr__(self, "_templates", {})

    @property
    def ca_id(self) -> str:
        return certificate_id(self.certificate)

    def _template(self, now: dt.datetime, days: int, profile: tuple) -> x509.CertificateBuilder:
        """Issuer, validity, AKI and the profile's extensions: everything but subject, key, serial and SKI."""
        key = (now, days, profile)
        builder = self._templates.get(key)
        if builder is None:
            not_after = min(now + dt.timedelta(days=days), self.certificate.not_valid_after_utc)
            builder = (
                x509.CertificateBuilder()
                .issuer_name(self.certificate.subject)
                .not_valid_before(now - BACKDATE)
                .not_valid_after(not_after)
                .add_extension(self._aki, critical=False)
            )
            for extension, critical in _profile_extensions(profile):
                builder = builder.add_extension(extension, critical=critical)
            if len(self._templates) >= 16:
                self._templates.clear()
            self._templates[key] = builder
        return builder

    def _issue(self, subject: x509.Name, public_key, *, now: dt.datetime, days: int, profile: tuple,
               serial: int | None, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
        builder = (
            self._template(now, days, profile)
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(serial or random_serial())
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, _hash_for(self.key))

    def issue_ca(self, key: PrivateKey, cn: str, *, now: dt.datetime, days: int = DEFAULT_ISSUING_DAYS,
                 organization: str | None = "iotgate", serial: int | None = None) -> CertificateAuthority:
        """An intermediate CA under this one, path length 0: it can sign leaves only."""
        cert = self._issue(_name(cn, organization), key.public_key(), now=now, days=days, profile=("ca", 0),
                           serial=serial)
        return CertificateAuthority(key, cert, (self.certificate, *self.chain))

    def _leaf(self, subject: x509.Name, public_key, eku, *, now, days, serial, sans=None) -> x509.Certificate:
        profile = ("leaf", eku, isinstance(public_key, rsa.RSAPublicKey))
        return self._issue(subject, public_key, now=now, days=days, profile=profile, serial=serial, sans=sans)

    def issue_server(self, key: PrivateKey, names: Iterable[str], *, now: dt.datetime,
                     days: int = DEFAULT_SERVER_DAYS, serial: int | None = None) -> x509.Certificate:
        names = list(dict.fromkeys(names))
        sans = [_general_name(n) for n in names]
        return self._leaf(_name(names[0], "iotgate"), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
                          now=now, days=days, serial=serial, sans=sans)

    def issue_client(self, key: PrivateKey, cn: str, *, now: dt.datetime, days: int = DEFAULT_SERVER_DAYS,
                     serial: int | None = None) -> x509.Certificate:
        return self._leaf(_name(cn, "iotgate"), key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH,
                          now=now, days=days, serial=serial)

    def sign_device_csr(self, csr: x509.CertificateSigningRequest, thing_name: str, *, now: dt.datetime,
                        days: int = DEFAULT_DEVICE_DAYS, serial: int | None = None,
                        source: str = "CSR") -> x509.Certificate:
        """Check a device's CSR (signature, key, CN == thing name) and issue its clientAuth certificate.

        Only the CSR's public key and CN are used: extensions a device asks for are ignored, the issuer
        decides them.
        """
        public_key = check_device_csr(csr, thing_name, source=source)
        return self._leaf(_name(thing_name), public_key, ExtendedKeyUsageOID.CLIENT_AUTH,
                          now=now, days=days, serial=serial)

    def pem_with_chain(self, leaf: x509.Certificate) -> bytes:
        """Leaf followed by this CA when it is an intermediate (what a TLS peer should send)."""
        parts = [leaf.public_bytes(serialization.Encoding.PEM)]
        if self.chain:
            parts.append(self._pem)
        return b"".join(parts)

    def build_crl(self, revoked: Sequence[tuple[int, dt.datetime]], *, now: dt.datetime,
                  next_update_days: int = 7) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=next_update_days))
            .add_extension(self._aki, critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, _hash_for(self.key))


def build_root_ca(key: PrivateKey, cn: str, *, now: dt.datetime, days: int = DEFAULT_ROOT_DAYS,
                  organization: str | None = "iotgate", serial: int | None = None) -> CertificateAuthority:
    name = _name(cn, organization)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial or random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    for extension, critical in _profile_extensions(("ca", 1)):
        builder = builder.add_extension(extension, critical=critical)
    return CertificateAuthority(key, builder.sign(key, _hash_for(key)))


def check_device_csr(csr: x509.CertificateSigningRequest, thing_name: str, *, source: str = "CSR"):
    """Refuse a CSR with a bad signature, a weak or unsupported key, or a CN other than the thing name;
    return its public key."""
    if not csr.is_signature_valid:
        raise PKIError(f"{source}: CSR signature does not verify; the CSR was altered or not signed by its key")
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{source}: unsupported public key in CSR ({exc})") from None
    check_device_key(public_key, source=source)
    cn = common_name(csr.subject)
    if cn != thing_name:
        shown = "no CN" if cn is None else f"CN {cn!r}"
        raise PKIError(f"{source}: subject has {shown}, but it must equal the thing name {thing_name!r}")
    return public_key


def load_csr(data: bytes, *, source: str) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise PKIError(f"{source}: not a PEM or DER certificate signing request") from None


def load_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (or one DER certificate); a clear error if there are none."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise PKIError(f"{source}: not a PEM or DER X.509 certificate") from None
    if not certs:
        raise PKIError(f"{source}: no certificate found")
    return certs


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (name and signature both checked)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _profile_extensions(profile: tuple) -> list[tuple[x509.ExtensionType, bool]]:
    """("ca", pathlen) or ("leaf", eku_oid, rsa_key): basicConstraints, keyUsage and extendedKeyUsage."""
    if profile[0] == "ca":
        return [
            (x509.BasicConstraints(ca=True, path_length=profile[1]), True),
            (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                           encipher_only=False, decipher_only=False), True),
        ]
    _, eku, rsa_key = profile
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                       encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([eku]), False),
    ]


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
