"""The PKI on disk, in the iotgate home.

    root-ca.pem  root-ca.key          self-signed root (key 0600, optionally passphrase-encrypted)
    issuing-ca.pem  issuing-ca.key    issuing CA, pathlen 0, signs devices, server, gateway client, CRL
    ca-chain.pem                      issuing + root
    server.pem  server.key            gateway server certificate (leaf + issuing), serverAuth
    crl.pem                           CRL of the issuing CA
    upstream-ca.pem  upstream-ca.key  east-west root: the only CA the upstream broker trusts for clients
    upstream-crl.pem                  CRL of the upstream CA
    gateway-client.pem  .key          the gateway's own identity for upstream connections, clientAuth,
                                      issued by the upstream CA (never by the CA that issues devices, so no
                                      device certificate can ever pass for the gateway at the broker)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority, build_root_ca, cert_pem, load_certificates
from certs.errors import PKIError
from certs.keys import KeyType, generate_private_key, load_private_key, private_key_pem, write_file, \
    write_private_file

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
GATEWAY_CLIENT_CN = "iotgate-gateway"
PASSPHRASE_ENV = "IOTGATE_CA_PASSPHRASE"


@dataclasses.dataclass(frozen=True, slots=True)
class PKIPaths:
    home: Path

    @property
    def root_cert(self) -> Path: return self.home / "root-ca.pem"
    @property
    def root_key(self) -> Path: return self.home / "root-ca.key"
    @property
    def issuing_cert(self) -> Path: return self.home / "issuing-ca.pem"
    @property
    def issuing_key(self) -> Path: return self.home / "issuing-ca.key"
    @property
    def chain(self) -> Path: return self.home / "ca-chain.pem"
    @property
    def server_cert(self) -> Path: return self.home / "server.pem"
    @property
    def server_key(self) -> Path: return self.home / "server.key"
    @property
    def client_cert(self) -> Path: return self.home / "gateway-client.pem"
    @property
    def client_key(self) -> Path: return self.home / "gateway-client.key"
    @property
    def crl(self) -> Path: return self.home / "crl.pem"
    @property
    def upstream_ca_cert(self) -> Path: return self.home / "upstream-ca.pem"
    @property
    def upstream_ca_key(self) -> Path: return self.home / "upstream-ca.key"
    @property
    def upstream_crl(self) -> Path: return self.home / "upstream-crl.pem"
    @property
    def devices(self) -> Path: return self.home / "devices"


@dataclasses.dataclass(frozen=True, slots=True)
class PKI:
    """What ``init`` made: both CAs (with keys) and the gateway's two identities."""

    root: CertificateAuthority
    issuing: CertificateAuthority
    upstream: CertificateAuthority
    server: x509.Certificate
    gateway_client: x509.Certificate


class HomeMissing(PKIError):
    pass


def require_home(home: Path) -> None:
    """The one check every command makes before it uses a home."""
    if not Path(home).is_dir():
        raise HomeMissing(f"{home}: no iotgate home here; run `iotgate --home {home} pki init` first, "
                          "or pass --home / set IOTGATE_HOME")


class PKIStore:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.paths = PKIPaths(self.home)

    def exists(self) -> bool:
        return self.paths.root_cert.exists() or self.paths.issuing_key.exists()

    def require(self) -> None:
        if not self.paths.issuing_key.exists() or not self.paths.issuing_cert.exists():
            raise PKIError(f"{self.home}: no PKI here; run `iotgate --home {self.home} pki init` first")

    def init(self, *, key_type: KeyType | str = KeyType.EC_P256, server_names: Sequence[str] = (),
             now: dt.datetime, passphrase: bytes | None = None, force: bool = False,
             device_days: int | None = None, server_days: int = 825) -> PKI:
        if self.exists() and not force:
            raise PKIError(f"{self.home}: a PKI already exists; pass --force to replace it (devices issued by it "
                           "will no longer be trusted)")
        # Everything is built in memory first, so a failure leaves the files as they were.
        root = build_root_ca(generate_private_key(key_type), "iotgate Root CA", now=now)
        issuing = root.issue_ca(generate_private_key(key_type), "iotgate Issuing CA 1", now=now)
        server_key = generate_private_key(key_type)
        server = issuing.issue_server(server_key, [*DEFAULT_SERVER_NAMES, *server_names], now=now, days=server_days)
        upstream = build_root_ca(generate_private_key(key_type), "iotgate Upstream CA", now=now)
        client_key = generate_private_key(key_type)
        client = upstream.issue_client(client_key, GATEWAY_CLIENT_CN, now=now, days=server_days)
        crl = issuing.build_crl([], now=now)

        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)
        p = self.paths
        write_private_file(p.root_key, private_key_pem(root.key, passphrase))
        write_private_file(p.issuing_key, private_key_pem(issuing.key, passphrase))
        write_private_file(p.upstream_ca_key, private_key_pem(upstream.key, passphrase))
        write_private_file(p.server_key, private_key_pem(server_key))
        write_private_file(p.client_key, private_key_pem(client_key))
        write_file(p.root_cert, cert_pem(root.certificate))
        write_file(p.issuing_cert, cert_pem(issuing.certificate))
        write_file(p.chain, cert_pem(issuing.certificate) + cert_pem(root.certificate))
        write_file(p.server_cert, issuing.pem_with_chain(server))
        write_file(p.upstream_ca_cert, cert_pem(upstream.certificate))
        write_file(p.upstream_crl, upstream.build_crl([], now=now).public_bytes(serialization.Encoding.PEM))
        write_file(p.client_cert, upstream.pem_with_chain(client))
        self.write_crl(crl)
        return PKI(root, issuing, upstream, server, client)

    def root_certificate(self) -> x509.Certificate:
        return self._read_cert(self.paths.root_cert)

    def issuing_certificate(self) -> x509.Certificate:
        return self._read_cert(self.paths.issuing_cert)

    def root_pem(self) -> bytes:
        self.require()
        return self.paths.root_cert.read_bytes()

    def load_issuer(self, passphrase: bytes | None = None) -> CertificateAuthority:
        """The issuing CA with its key, ready to sign (the passphrase comes from IOTGATE_CA_PASSPHRASE)."""
        self.require()
        key = load_private_key(self.paths.issuing_key, passphrase)
        return CertificateAuthority(key, self.issuing_certificate(), (self.root_certificate(),))

    def write_crl(self, crl: x509.CertificateRevocationList) -> None:
        write_file(self.paths.crl, crl.public_bytes(serialization.Encoding.PEM))

    def _read_cert(self, path: Path) -> x509.Certificate:
        self.require()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PKIError(f"{path}: missing; the PKI in {self.home} is incomplete, re-create it with "
                           "`iotgate pki init --force`") from None
        return load_certificates(data, source=str(path))[0]
