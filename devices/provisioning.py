"""Issuing identities and registering them: one device (sign-csr, rotate) or a whole fleet in parallel.

Order of effects is what keeps a crash harmless: keys and CSRs are made on the device side, the issuer
checks and signs, device files are written (atomically, per directory), and only then is the registry
written, one transaction per batch. A re-run skips things already registered and redoes the rest; a
device directory without its registry rows is stale and is replaced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import CertificateAuthority, cert_pem, certificate_id, common_name, load_csr, serial_hex
from certs.errors import IotgateError
from certs.keys import KeyType, private_key_pem
from certs.store import PKIStore
from devices.identity import csr_der, make_key_and_csr, write_device_dir
from gateway.policy import parse_policy
from gateway.registry import NotFound, ProvisionItem, Registry

DEFAULT_POLICY_NAME = "iotgate-device"
# Least privilege for a device whose client id is its thing name: its own telemetry topics out, its own
# command topics in. ${iot:Connection.Thing.ThingName} resolves only when the client id names a thing
# attached to the certificate, so one certificate cannot connect as another device.
DEFAULT_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish",
     "Resource": ["arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*",
                  "arn:aws:iot:*:*:topic/cmd/${iot:Connection.Thing.ThingName}/resp/*"]},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": "arn:aws:iot:*:*:topicfilter/cmd/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": "iot:Receive",
     "Resource": "arn:aws:iot:*:*:topic/cmd/${iot:Connection.Thing.ThingName}/*"}
  ]
}
"""

BATCH = 500


class ProvisioningError(IotgateError):
    pass


def ensure_policy(registry: Registry, spec: str | None) -> str:
    """A policy name to attach: an existing policy's name, or a JSON file registered under its stem."""
    if spec is None:
        try:
            registry.get_policy(DEFAULT_POLICY_NAME)
        except NotFound:
            parse_policy(DEFAULT_POLICY, name=DEFAULT_POLICY_NAME)
            registry.create_policy(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
        return DEFAULT_POLICY_NAME
    path = Path(spec)
    if path.is_file():
        text = read_text(path)
        name = path.stem
        parse_policy(text, name=name)
        try:
            existing = registry.get_policy(name)
        except NotFound:
            registry.create_policy(name, text)
            return name
        if existing.document.strip() != text.strip():
            raise ProvisioningError(f"{path}: policy {name!r} already exists with another document; "
                                    f"use `iotgate policy create-version {name} {path}` to change it")
        return name
    try:
        registry.get_policy(spec)
    except NotFound:
        raise ProvisioningError(f"unknown policy {spec!r}: create it with `iotgate policy create {spec} FILE` "
                                "or pass a policy JSON file") from None
    return spec


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisioningError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ProvisioningError(f"{path}: not UTF-8 text") from None


def item_for(thing: str, cert: x509.Certificate, pem: bytes, ca_id: str, policies: Sequence[str]) -> ProvisionItem:
    """Registry rows of a certificate issued for ``thing`` (its CN is the thing name: the issuer checked it)."""
    return ProvisionItem(
        thing=thing, certificate_id=certificate_id(cert), pem=pem.decode(), serial_number=serial_hex(cert),
        subject_cn=thing, ca_id=ca_id, not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc, policies=tuple(policies),
    )


def register_certificate(registry: Registry, thing: str, cert: x509.Certificate, pem: bytes, ca_id: str | None,
                         policies: Sequence[str], *, status: str = "ACTIVE", create_thing: bool = True) -> str:
    """Register one certificate for a thing (creating the thing if needed) and attach its policies."""
    cert_id = certificate_id(cert)
    for name in policies:
        registry.get_policy(name)  # unknown policy -> NotFound before anything is written
    try:
        registry.get_thing(thing)
    except NotFound:
        if not create_thing:
            raise
        registry.create_thing(thing)
    registry.register_certificate(cert_id, pem.decode(), serial_hex(cert), common_name(cert.subject) or "",
                                  ca_id, cert.not_valid_before_utc, cert.not_valid_after_utc, status=status)
    registry.attach_thing_principal(thing, cert_id)
    for name in policies:
        registry.attach_policy(name, cert_id)
    return cert_id


def sign_csr(registry: Registry, issuer: CertificateAuthority, csr_bytes: bytes, thing: str, *,
             policy_specs: Sequence[str], now: dt.datetime, days: int, source: str) -> tuple[str, bytes]:
    """Check and sign a CSR, then register it; a refused CSR leaves the registry untouched."""
    csr = load_csr(csr_bytes, source=source)
    cert = issuer.sign_device_csr(csr, thing, now=now, days=days, source=source)
    policies = [ensure_policy(registry, spec) for spec in policy_specs] or [ensure_policy(registry, None)]
    pem = issuer.pem_with_chain(cert)
    return register_certificate(registry, thing, cert, pem, issuer.ca_id, policies), pem


def register_own_cas(registry: Registry, store: PKIStore) -> list[str]:
    """Register the home's root and issuing CAs (ACTIVE, own) so the gateway trusts them; idempotent."""
    ids = []
    for cert in (store.root_certificate(), store.issuing_certificate()):
        ca_id = certificate_id(cert)
        try:
            registry.get_ca(ca_id)
        except NotFound:
            registry.register_ca(ca_id, cert_pem(cert).decode(), cert.subject.rfc4514_string(), status="ACTIVE",
                                 is_own=True)
        ids.append(ca_id)
    return ids


def rewrite_crl(store: PKIStore, registry: Registry, issuer: CertificateAuthority, now: dt.datetime) -> int:
    revoked = [(int(serial, 16), when) for serial, when in registry.revoked_serials(issuer.ca_id)]
    store.write_crl(issuer.build_crl(revoked, now=now))
    return len(revoked)


# --------------------------------------------------------------------------------------------- fleet

def thing_names(prefix: str, count: int, start: int = 1) -> list[str]:
    """Stable names across runs (the width never depends on the count): device-00001, device-00002, ..."""
    return [f"{prefix}{i:05d}" for i in range(start, start + count)]


@dataclasses.dataclass(frozen=True, slots=True)
class FleetReport:
    requested: int
    skipped: int
    issued: int
    seconds: float
    policies: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    issuer_key_pem: bytes = dataclasses.field(repr=False)  # never in a repr, a traceback's locals or a log
    issuer_cert_pem: bytes
    root_pem: bytes
    devices_dir: str
    key_type: str
    now: dt.datetime
    days: int
    policies: tuple[str, ...]


_worker: tuple[_Job, CertificateAuthority] | None = None


def _init_worker(job: _Job) -> None:
    global _worker
    key = serialization.load_pem_private_key(job.issuer_key_pem, password=None)
    cert = x509.load_pem_x509_certificate(job.issuer_cert_pem)
    root = x509.load_pem_x509_certificate(job.root_pem)
    _worker = (job, CertificateAuthority(key, cert, (root,)))


def _init_pool_worker(job: _Job) -> None:
    # Ctrl-C belongs to the parent: it stops the pool; a worker prints no traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(job)


def _issue_chunk(names: Sequence[str]) -> list[ProvisionItem]:
    assert _worker is not None
    job, issuer = _worker
    devices_dir = Path(job.devices_dir)
    items = []
    for thing in names:
        key, csr = make_key_and_csr(thing, job.key_type)  # device side: the key never leaves it
        request = load_csr(csr_der(csr), source=f"CSR of {thing}")  # what the issuer receives
        cert = issuer.sign_device_csr(request, thing, now=job.now, days=job.days, source=f"CSR of {thing}")
        pem = issuer.pem_with_chain(cert)
        write_device_dir(devices_dir, thing, key, pem, job.root_pem)
        items.append(item_for(thing, cert, pem, issuer.ca_id, job.policies))
    return items


def provision_fleet(store: PKIStore, registry: Registry, issuer: CertificateAuthority, names: Sequence[str], *,
                    policies: Sequence[str], key_type: KeyType | str, workers: int, now: dt.datetime, days: int,
                    on_progress: Callable[[int], None] = lambda n: None,
                    clock: Callable[[], float] | None = None) -> FleetReport:
    clock = clock or time.perf_counter
    started = clock()
    existing = registry.existing_things(names)
    todo = [name for name in names if name not in existing]
    on_progress(len(existing))
    store.paths.devices.mkdir(mode=0o700, exist_ok=True)
    job = _Job(
        issuer_key_pem=private_key_pem(issuer.key), issuer_cert_pem=cert_pem(issuer.certificate), root_pem=store.root_pem(), devices_dir=str(store.paths.devices),
        key_type=str(KeyType(key_type)), now=now, days=days, policies=tuple(policies),
    )
    chunks = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    issued = 0
    for items in _run(job, chunks, workers):
        registry.provision_batch(items)
        issued += len(items)
        on_progress(len(items))
    return FleetReport(len(names), len(existing), issued, clock() - started, tuple(policies))


def _run(job: _Job, chunks: list[list[str]], workers: int) -> Iterator[list[ProvisionItem]]:
    if not chunks:
        return
    if workers <= 1 or len(chunks) == 1:
        _init_worker(job)
        for chunk in chunks:
            yield _issue_chunk(chunk)
        return
    # fork: workers start in milliseconds and share the loaded modules; they touch no registry connection.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=min(workers, len(chunks)), initializer=_init_pool_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(_issue_chunk, chunks)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


