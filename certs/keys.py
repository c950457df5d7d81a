"""Private keys: generation, (de)serialisation, policy checks and 0600 files.

Key material never reaches a log or an error message: errors name the file, never its content.
"""

from __future__ import annotations

import enum
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.errors import PKIError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


_CURVES = {KeyType.EC_P256: ec.SECP256R1, KeyType.EC_P384: ec.SECP384R1}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072}

# What the issuer accepts in a device CSR (AWS IoT accepts the same families; P-521 is left out on purpose).
DEVICE_CURVES = frozenset({"secp256r1", "secp384r1"})
MIN_RSA_BITS = 2048


def generate_private_key(key_type: KeyType | str) -> PrivateKey:
    key_type = KeyType(key_type)
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def describe_key(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name}"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA-{key.key_size}"
    return type(key).__name__


def check_device_key(key: object, *, source: str) -> None:
    """Refuse keys AWS IoT would refuse or that are too weak: RSA < 2048, curves other than P-256/P-384."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise PKIError(f"{source}: RSA-{key.key_size} key refused; use RSA >= {MIN_RSA_BITS} or EC P-256/P-384")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in DEVICE_CURVES:
            raise PKIError(f"{source}: EC {key.curve.name} key refused; use EC P-256 (secp256r1) or P-384 (secp384r1)")
        return
    raise PKIError(f"{source}: {type(key).__name__} key refused; use EC P-256/P-384 or RSA >= {MIN_RSA_BITS}")


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{path}: key file not found") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        if passphrase:
            raise PKIError(f"{path}: key is not encrypted but a passphrase was given") from None
        raise PKIError(f"{path}: key is encrypted; set its passphrase in IOTGATE_CA_PASSPHRASE") from None
    except ValueError:
        if passphrase:
            raise PKIError(f"{path}: cannot decrypt the key: wrong passphrase or not a PEM private key") from None
        raise PKIError(f"{path}: not a PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PKIError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write atomically: a temporary sibling created with its final mode, then renamed over ``path``.

    A private file is created 0600 from the first byte (never written then chmod-ed).
    """
    # A fresh unpredictable name, created exclusively and never through a symlink someone planted.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private_file(path: Path, data: bytes) -> None:
    write_file(path, data, mode=0o600)
