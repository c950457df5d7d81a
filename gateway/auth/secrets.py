"""Secret access keys at rest: sealed with a key-encryption key kept in the home, never stored in clear.

SigV4 cannot be checked against a hash of the secret: the verifier derives the signing key from the secret
itself (``HMAC("AWS4" + secret, date)`` first, then region, service, ``aws4_request``), and the first step
depends on the request's date. So the registry holds the secret *encrypted*: AES-256-GCM (``cryptography``'s
AESGCM) with a 96-bit random nonce per secret and the access key id as associated data, so a sealed secret
copied onto another key's row does not open. The 32-byte key-encryption key is the file ``secrets.key`` in the
iotgate home, created 0600 on first use and never logged; a stolen registry (a database dump, a PostgreSQL
replica) holds no usable secret without it. Several gateway nodes sharing one PostgreSQL registry need the
same file. The secret itself is shown once, when the key is created (as AWS IAM's CreateAccessKey does).

Session tokens of temporary keys are only compared, never used as key material: they are stored as SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certs.errors import IotgateError
from certs.keys import write_private_file

KEY_FILE = "secrets.key"
_PREFIX = "v1:"
_NONCE = 12


class SecretError(IotgateError):
    """A sealed secret cannot be opened (wrong or missing key-encryption key, damaged value)."""


class SecretBox:
    """Seals and opens secret access keys with one key-encryption key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SecretError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    @classmethod
    def load(cls, home: Path, *, create: bool = False) -> SecretBox:
        """The home's box; ``create`` makes the key file (0600) when there is none."""
        path = Path(home) / KEY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise SecretError(f"{path}: no key-encryption key; it is created with the first "
                                  "`iotgate identity create-key` (copy it to every gateway sharing this registry)") \
                    from None
            data = os.urandom(32)
            write_private_file(path, data)
        if len(data) != 32:
            raise SecretError(f"{path}: not a key-encryption key (32 bytes expected, found {len(data)})")
        return cls(data)

    def seal(self, access_key_id: str, secret: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), access_key_id.encode("ascii"))
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, access_key_id: str, sealed: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SecretError(f"the secret of access key {access_key_id} is not in a known sealed format")
        try:
            raw = base64.b64decode(sealed[len(_PREFIX):], validate=True)
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], access_key_id.encode("ascii"))
        except (ValueError, InvalidTag):
            raise SecretError(f"the secret of access key {access_key_id} does not open with this home's "
                              f"{KEY_FILE} (another home's key, or a damaged value)") from None
        return plain.decode("utf-8")


def token_digest(session_token: str) -> str:
    return hashlib.sha256(session_token.encode("utf-8")).hexdigest()


def token_matches(session_token: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(session_token), digest)
