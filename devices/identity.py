"""Device side of an identity: the private key is made here, on the device, and only a CSR leaves it.

A device directory holds ``device.pem`` (leaf + issuing CA), ``device.key`` (0600) and ``root-ca.pem``.
It is written into a hidden temporary directory and renamed into place, so a crash never leaves a
half-written device directory behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.keys import KeyType, PrivateKey, generate_private_key, private_key_pem

DEVICE_CERT = "device.pem"
DEVICE_KEY = "device.key"
ROOT_CA = "root-ca.pem"
PREVIOUS_CERT = "device.previous.pem"
PREVIOUS_KEY = "device.previous.key"


def make_key_and_csr(thing_name: str, key_type: KeyType | str = KeyType.EC_P256
                     ) -> tuple[PrivateKey, x509.CertificateSigningRequest]:
    """A fresh key pair and a CSR signed by it, with CN = the thing name (what the issuer checks)."""
    key = generate_private_key(key_type)
    algorithm = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256 \
        else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing_name)]))
        .sign(key, algorithm)
    )
    return key, csr


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFiles:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / DEVICE_CERT

    @property
    def key(self) -> Path:
        return self.directory / DEVICE_KEY

    @property
    def root_ca(self) -> Path:
        return self.directory / ROOT_CA

    def complete(self) -> bool:
        return self.cert.exists() and self.key.exists() and self.root_ca.exists()


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_device_dir(devices_dir: Path, thing_name: str, key: PrivateKey, chain_pem: bytes,
                     root_pem: bytes) -> DeviceFiles:
    """Write a device's files atomically: a temporary directory renamed into place (replacing a stale one)."""
    final = devices_dir / thing_name
    tmp = devices_dir / f".{thing_name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    _write(tmp / DEVICE_KEY, private_key_pem(key), 0o600)
    _write(tmp / DEVICE_CERT, chain_pem, 0o644)
    _write(tmp / ROOT_CA, root_pem, 0o644)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return DeviceFiles(final)


def rotate_device_files(device_dir: Path, key: PrivateKey, chain_pem: bytes) -> DeviceFiles:
    """Install a new key and certificate; the current pair is kept as ``device.previous.*`` until retired."""
    files = DeviceFiles(device_dir)
    new_key = device_dir / f".{DEVICE_KEY}.new"
    new_cert = device_dir / f".{DEVICE_CERT}.new"
    for stale in (new_key, new_cert):
        stale.unlink(missing_ok=True)
    _write(new_key, private_key_pem(key), 0o600)
    _write(new_cert, chain_pem, 0o644)
    if files.cert.exists():
        os.replace(files.cert, device_dir / PREVIOUS_CERT)
    if files.key.exists():
        os.replace(files.key, device_dir / PREVIOUS_KEY)
    os.replace(new_key, files.key)
    os.replace(new_cert, files.cert)
    return files
