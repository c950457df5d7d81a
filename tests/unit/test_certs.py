"""PKI: hierarchy, extensions, CSR checks, CRL, key files. Verified by cryptography's verifier and openssl."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from certs.authority import certificate_id, load_certificates, load_csr
from certs.errors import PKIError
from certs.keys import KeyType, load_private_key
from certs.store import PKIStore
from devices.identity import csr_der, make_key_and_csr, write_device_dir

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PKIStore:
    s = PKIStore(tmp_path_factory.mktemp("pki") / "home")
    s.init(now=NOW, server_names=["gw.example"])
    return s


def _csr(key, cn: str | None) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def _verify_client(store: PKIStore, leaf: x509.Certificate, at: dt.datetime = NOW) -> None:
    # Device certificates carry no SAN (AWS IoT's neither): the web PKI end-entity profile is relaxed for it.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    verifier = (PolicyBuilder().store(Store([store.root_certificate()])).time(at)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
                .build_client_verifier())
    verifier.verify(leaf, [store.issuing_certificate()])


def test_files_and_modes(store: PKIStore):
    names = {p.name for p in store.home.iterdir()}
    assert {"root-ca.pem", "issuing-ca.pem", "ca-chain.pem", "server.pem", "server.key", "gateway-client.pem",
            "gateway-client.key", "crl.pem", "root-ca.key", "issuing-ca.key", "upstream-ca.pem", "upstream-ca.key",
            "upstream-crl.pem"} <= names
    assert stat.S_IMODE(store.home.stat().st_mode) == 0o700
    for key in ("server.key", "gateway-client.key", "root-ca.key", "issuing-ca.key", "upstream-ca.key"):
        assert stat.S_IMODE((store.home / key).stat().st_mode) == 0o600, key


def test_hierarchy_extensions(store: PKIStore):
    root, issuing = store.root_certificate(), store.issuing_certificate()
    bc = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    aki = issuing.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    server = load_certificates(store.paths.server_cert.read_bytes(), source="server")
    assert len(server) == 2 and server[1] == issuing  # leaf + issuing
    eku = server[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "gw.example"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    client = load_certificates(store.paths.client_cert.read_bytes(), source="client")[0]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # the gateway's identity comes from the east-west CA alone: it does not chain to the device CAs
    upstream = load_certificates(store.paths.upstream_ca_cert.read_bytes(), source="upstream")[0]
    assert client.issuer == upstream.subject and upstream not in (store.root_certificate(), issuing)
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    verifier = (PolicyBuilder().store(Store([upstream])).time(NOW)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
                .build_client_verifier())
    verifier.verify(client, [])
    with pytest.raises(VerificationError):
        _verify_client(store, client)


def test_second_init_refused_without_force(store: PKIStore):
    before = store.paths.root_cert.read_bytes()
    with pytest.raises(PKIError, match="already exists.*--force"):
        store.init(now=NOW)
    assert store.paths.root_cert.read_bytes() == before


@pytest.mark.parametrize("key_type", list(KeyType))
def test_device_certificate_verifies(store: PKIStore, key_type: KeyType, tmp_path: Path):
    issuer = store.load_issuer()
    key, csr = make_key_and_csr("thermo-1", key_type)
    cert = issuer.sign_device_csr(load_csr(csr_der(csr), source="csr"), "thermo-1", now=NOW, days=30)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "thermo-1"
    assert 0 < cert.serial_number < 2**128
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30, minutes=5)
    assert len(certificate_id(cert)) == 64
    _verify_client(store, cert)
    files = write_device_dir(tmp_path, "thermo-1", key, issuer.pem_with_chain(cert), store.root_pem())
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert load_private_key(files.key).public_key().public_numbers() == cert.public_key().public_numbers()


def test_openssl_verifies_device_chain(store: PKIStore, tmp_path: Path):
    issuer = store.load_issuer()
    key, csr = make_key_and_csr("dev-ossl")
    cert = issuer.sign_device_csr(csr, "dev-ossl", now=dt.datetime.now(dt.UTC))
    files = write_device_dir(tmp_path, "dev-ossl", key, issuer.pem_with_chain(cert), store.root_pem())
    out = subprocess.run(["openssl", "verify", "-CAfile", str(store.paths.root_cert), "-untrusted",
                          str(store.paths.issuing_cert), "-purpose", "sslclient", str(files.cert)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": OK")
    # the same leaf is refused as a TLS server certificate
    out = subprocess.run(["openssl", "verify", "-CAfile", str(store.paths.root_cert), "-untrusted",
                          str(store.paths.issuing_cert), "-purpose", "sslserver", str(files.cert)],
                         capture_output=True, text=True)
    assert out.returncode != 0


def _tampered_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(_csr(key, "dev-x").public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    return bytes(der)


BAD_CSRS = [
    ("bad-signature", lambda: _tampered_csr(), "dev-x", "signature does not verify"),
    ("rsa-1024", lambda: _csr(rsa.generate_private_key(65537, 1024), "dev-x"), "dev-x", "RSA-1024 key refused"),
    ("p-192", lambda: _csr(ec.generate_private_key(ec.SECP192R1()), "dev-x"), "dev-x", "secp192r1 key refused"),
    ("p-521", lambda: _csr(ec.generate_private_key(ec.SECP521R1()), "dev-x"), "dev-x", "secp521r1 key refused"),
    ("cn-mismatch", lambda: _csr(ec.generate_private_key(ec.SECP256R1()), "dev-y"), "dev-x",
     "CN 'dev-y', but it must equal the thing name 'dev-x'"),
    ("no-cn", lambda: _csr(ec.generate_private_key(ec.SECP256R1()), None), "dev-x", "no CN"),
    ("not-a-csr", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
     "dev-x", "not a PEM or DER certificate signing request"),
]


@pytest.mark.parametrize("name,make,thing,message", BAD_CSRS, ids=[c[0] for c in BAD_CSRS])
def test_bad_csr_refused(store: PKIStore, name, make, thing, message):
    made = make()
    data = made if isinstance(made, bytes) else made.public_bytes(serialization.Encoding.PEM)
    issuer = store.load_issuer()
    with pytest.raises(PKIError) as info:
        issuer.sign_device_csr(load_csr(data, source="req.csr"), thing, now=NOW, source="req.csr")
    assert message in str(info.value)
    assert str(info.value).startswith("req.csr: ")


def test_crl_lists_revoked_serials(store: PKIStore):
    issuer = store.load_issuer()
    crl = issuer.build_crl([(12345, NOW), (2**127 + 1, NOW)], now=NOW)
    assert crl.is_signature_valid(store.issuing_certificate().public_key())
    assert {r.serial_number for r in crl} == {12345, 2**127 + 1}
    assert crl.get_revoked_certificate_by_serial_number(12345) is not None


def test_encrypted_ca_keys(tmp_path: Path):
    s = PKIStore(tmp_path / "enc")
    s.init(now=NOW, passphrase=b"correct horse")
    assert b"ENCRYPTED" in s.paths.issuing_key.read_bytes()
    assert s.load_issuer(b"correct horse").certificate == s.issuing_certificate()
    with pytest.raises(PKIError, match="is encrypted; set its passphrase in IOTGATE_CA_PASSPHRASE"):
        s.load_issuer(None)
    with pytest.raises(PKIError, match="wrong passphrase"):
        s.load_issuer(b"wrong")


def test_device_validity_never_outlives_issuer(store: PKIStore):
    issuer = store.load_issuer()
    _, csr = make_key_and_csr("long")
    cert = issuer.sign_device_csr(csr, "long", now=NOW, days=100 * 365)
    assert cert.not_valid_after_utc == store.issuing_certificate().not_valid_after_utc


def test_write_device_dir_replaces_stale(tmp_path: Path, store: PKIStore):
    issuer = store.load_issuer()
    stale = tmp_path / "dev-s"
    stale.mkdir()
    (stale / "junk").write_text("half written")
    key, csr = make_key_and_csr("dev-s")
    cert = issuer.sign_device_csr(csr, "dev-s", now=NOW)
    files = write_device_dir(tmp_path, "dev-s", key, issuer.pem_with_chain(cert), store.root_pem())
    assert sorted(p.name for p in files.directory.iterdir()) == ["device.key", "device.pem", "root-ca.pem"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
