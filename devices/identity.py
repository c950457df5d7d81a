"""Device side of an identity: the private key is made here, on the device, and only a CSR leaves it.

A device directory holds ``device.pem`` (leaf + issuing CA), ``device.key`` (0600) and ``root-ca.pem``.
It is written into a hidden temporary directory and renamed into place, so a crash never leaves a
half-written device directory behind.

:class:`DeviceIdentity` is the loaded form a device client connects with (:func:`load_identities` for a fleet).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.errors import IotgateError
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


def _write(path: Path | str, data: bytes, mode: int, *, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_device_dir(devices_dir: Path, thing_name: str, key: PrivateKey, chain_pem: bytes,
                     root_pem: bytes) -> DeviceFiles:
    """Write a device's files atomically: a temporary directory renamed into place (replacing a stale one).

    Files are created relative to the directory's descriptor: bulk provisioning writes three files per device,
    and each path lookup counts there.
    """
    final = devices_dir / thing_name
    tmp = devices_dir / f".{thing_name}.{os.getpid()}.tmp"
    try:
        os.mkdir(tmp, 0o700)
    except FileExistsError:  # left by a crashed run of this process id
        shutil.rmtree(tmp)
        os.mkdir(tmp, 0o700)
    dir_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write(DEVICE_KEY, private_key_pem(key), 0o600, dir_fd=dir_fd)
        _write(DEVICE_CERT, chain_pem, 0o644, dir_fd=dir_fd)
        _write(ROOT_CA, root_pem, 0o644, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        os.rename(tmp, final)
    except OSError:  # a stale directory of a run that never registered it
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


# --------------------------------------------------------------------------------------------- loading

class IdentityError(IotgateError):
    """A device directory cannot be used to connect: a file is missing or unreadable."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a device connects with: its thing name, its own key and certificate chain, and the CA it trusts
    for the server (the home's root, or e.g. Amazon Root CA 1 when it talks to AWS IoT Core).

    Paths are kept as strings: a simulator holds tens of thousands of these, and ``ssl`` takes strings.
    """

    thing_name: str
    cert_file: str
    key_file: str
    ca_file: str

    @classmethod
    def load(cls, directory: Path | str, *, ca_file: Path | str | None = None,
             thing_name: str | None = None) -> DeviceIdentity:
        """The identity in a device directory (``device.pem``, ``device.key``, ``root-ca.pem``).

        ``ca_file`` replaces the directory's ``root-ca.pem`` as the trust anchor for the server; the thing
        name defaults to the directory's name (as provisioning writes it).
        """
        directory = Path(directory)
        files = DeviceFiles(directory)
        ca = Path(ca_file) if ca_file is not None else files.root_ca
        for path, what in ((files.cert, "certificate"), (files.key, "private key"), (ca, "CA certificate")):
            if not path.is_file():
                hint = ("pass an existing CA file" if path == ca and ca_file is not None
                        else f"provision it again (`iotgate fleet provision`) or check the directory {directory}")
                raise IdentityError(f"{path}: the device's {what} is missing; {hint}")
        return cls(thing_name or directory.name, str(files.cert), str(files.key), str(ca))


def load_identities(devices_dir: Path | str, names: Sequence[str] | None = None, *,
                    ca_file: Path | str | None = None) -> list[DeviceIdentity]:
    """Identities of the named things (in that order), or of every complete device directory, sorted by name."""
    devices_dir = Path(devices_dir)
    if names is None:
        try:
            entries = sorted(p for p in devices_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            raise IdentityError(f"{devices_dir}: no devices directory; provision a fleet first "
                                "(`iotgate fleet provision --count N`)") from None
        return [DeviceIdentity.load(p, ca_file=ca_file) for p in entries if DeviceFiles(p).complete()]
    return [DeviceIdentity.load(devices_dir / name, ca_file=ca_file) for name in names]
