"""Identities a load test makes for itself, beside the fleet's: one e2e observer per worker, and the attackers.

They live in ``<home>/loadtest/`` (never among ``devices/``, so the pool of device users never contains them):

    loadtest/observers/iotgate-loadtest-observer-00/   device.pem, device.key (0600), root-ca.pem
    loadtest/attackers/iotgate-loadtest-<kind>-00/     one per attack kind that needs its own certificate
    loadtest/attackers/iotgate-loadtest-attacker-00/   a valid thing (default policy) for the policy attacks

Making them is idempotent: an identity whose files exist, whose certificate is still valid for a day (the
expired one excepted) and whose registry status is the expected one is reused; anything else is made again.
Registry work goes through a :class:`Registrar` the caller supplies (the CLI's provisioning service), so this
module imports nothing above ``devices``.

Attackers per kind: ``foreign-ca`` (signed by a CA nobody registered), ``expired`` (valid for one day, a year
ago, registered ACTIVE: only its validity can refuse it), ``unregistered`` (signed by the home's CA, never
registered), ``revoked`` and ``inactive`` (registered with that status), and ``no-certificate`` (no files: TLS
without a client certificate). ``client-id-spoof`` connects with the attacker thing's certificate as the victim
thing; ``publish-outside-policy``, ``subscribe-outside-policy`` and ``wildcard-subscribe`` connect as the
attacker thing and then step outside its policy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509

from certs.authority import build_root_ca
from certs.keys import generate_private_key
from devices.identity import DeviceFiles, DeviceIdentity, IdentityError, make_key_and_csr, write_device_dir

from .plan import POLICY_ATTACKS, TOKEN_ATTACKS, PlanError

__all__ = [
    "OBSERVER_POLICY",
    "OBSERVER_POLICY_NAME",
    "VICTIM",
    "AttackSlot",
    "attacker_client_id",
    "LoadtestDirs",
    "PrepareReport",
    "Registrar",
    "load_attack_slot",
    "load_observer",
    "observer_name",
    "pool_names",
    "prepare",
]

OBSERVER_POLICY_NAME = "iotgate-loadtest-observer"
# An observer reads the probes of load-test devices (dt/<thing>/telemetry/<token>) and nothing else.
OBSERVER_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/dt/+/telemetry/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/dt/*/telemetry/*"}
  ]
}
"""
VICTIM = "iotgate-loadtest-victim"   # a registered thing the spoofing attacker pretends to be
_EXPECTED_STATUS = {"expired": "ACTIVE", "revoked": "REVOKED", "inactive": "INACTIVE", "attacker": "ACTIVE",
                    "unregistered": None, "foreign-ca": None}
_VALIDITY_DAYS = 30


class Registrar(Protocol):
    """The registry operations a load test's identities need."""

    def ensure_policy(self, name: str, document: str) -> None: ...

    def ensure_thing(self, name: str) -> None: ...

    def status(self, certificate: x509.Certificate) -> str | None: ...   # None: not registered

    def register(self, thing: str, certificate: x509.Certificate, pem: bytes, status: str,
                 policies: Sequence[str]) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class LoadtestDirs:
    home: Path

    @property
    def root(self) -> Path:
        return self.home / "loadtest"

    @property
    def observers(self) -> Path:
        return self.root / "observers"

    @property
    def attackers(self) -> Path:
        return self.root / "attackers"

    @property
    def device_tokens(self) -> Path:
        """The device users' identity provider and SigV4 keys for ``--auth token|sigv4`` (0600)."""
        return self.root / "device-tokens"

    @property
    def tokens(self) -> Path:
        """The token attackers' identity provider, signing key and SigV4 keys (0600; see devices.token_attacks)."""
        return self.root / "tokens"


def observer_name(index: int) -> str:
    return f"iotgate-loadtest-observer-{index:02d}"


def _attacker_thing(role: str, slot: int) -> str:
    return f"iotgate-loadtest-{role}-{slot:02d}"


def attacker_client_id(kind: str, slot: int) -> str:
    """The client id of an attacker without a certificate (no-certificate, the token kinds) in ``slot``."""
    return _attacker_thing(kind, slot)


def _role(kind: str) -> str | None:
    """Which certificate an attack kind uses: its own (the kind), the attacker thing's, or none."""
    if kind == "no-certificate" or kind in TOKEN_ATTACKS:   # no certificate (tokens: loadtest/tokens/)
        return None
    return "attacker" if kind in POLICY_ATTACKS else kind


@dataclasses.dataclass(frozen=True, slots=True)
class PrepareReport:
    made: tuple[str, ...]
    reused: tuple[str, ...]
    revoked: bool          # a REVOKED certificate was (re)registered: the CRL should be rewritten


class _Maker:
    def __init__(self, dirs: LoadtestDirs, issuer, root_pem: bytes, registrar: Registrar | None,
                 now: dt.datetime, default_policy: str) -> None:
        self.dirs = dirs
        self.issuer = issuer
        self.root_pem = root_pem
        self.registrar = registrar
        self.now = now
        self.default_policy = default_policy
        self.made: list[str] = []
        self.reused: list[str] = []
        self.revoked = False
        self._foreign = None

    def ensure(self, directory: Path, thing: str, role: str, policies: Sequence[str]) -> None:
        expected = _EXPECTED_STATUS.get(role, "ACTIVE")
        if self._usable(directory / thing, role, expected):
            self.reused.append(thing)
            return
        key, csr = make_key_and_csr(thing)
        if role == "foreign-ca":
            if self._foreign is None:
                self._foreign = build_root_ca(generate_private_key("ec-p256"), "Foreign Root", now=self.now)
            cert = self._foreign.sign_device_csr(csr, thing, now=self.now, days=_VALIDITY_DAYS)
            pem = self._foreign.pem_with_chain(cert)
        elif role == "expired":
            cert = self.issuer.sign_device_csr(csr, thing, now=self.now - dt.timedelta(days=365), days=1)
            pem = self.issuer.pem_with_chain(cert)
        else:
            cert = self.issuer.sign_device_csr(csr, thing, now=self.now, days=_VALIDITY_DAYS)
            pem = self.issuer.pem_with_chain(cert)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_device_dir(directory, thing, key, pem, self.root_pem)
        if expected is not None:
            self._registrar().register(thing, cert, pem, expected, policies)
            self.revoked |= expected == "REVOKED"
        self.made.append(thing)

    def _registrar(self) -> Registrar:
        if self.registrar is None:
            raise PlanError("these load-test identities need a local registry (gateway or mosquitto targets)")
        return self.registrar

    def _usable(self, directory: Path, role: str, expected: str | None) -> bool:
        files = DeviceFiles(directory)
        if not files.complete():
            return False
        try:
            cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        except ValueError:
            return False
        if role != "expired" and cert.not_valid_after_utc < self.now + dt.timedelta(days=1):
            return False
        if expected is None or self.registrar is None:
            return expected is None
        return self.registrar.status(cert) == expected


def prepare(dirs: LoadtestDirs, issuer, root_pem: bytes, registrar: Registrar | None, *, observers: int,
            attack_slots: int, kinds: Sequence[str], now: dt.datetime, default_policy: str) -> PrepareReport:
    """Make (or reuse) ``observers`` observer identities and ``attack_slots`` sets of attacker identities for
    ``kinds``. ``registrar`` may be None only when nothing needs registering."""
    maker = _Maker(dirs, issuer, root_pem, registrar, now, default_policy)
    if observers:
        maker._registrar().ensure_policy(OBSERVER_POLICY_NAME, OBSERVER_POLICY)
    for index in range(observers):
        maker.ensure(dirs.observers, observer_name(index), "observer", [OBSERVER_POLICY_NAME])
    roles = sorted({role for kind in kinds if (role := _role(kind)) is not None})
    if "client-id-spoof" in kinds:
        maker._registrar().ensure_thing(VICTIM)
    for slot in range(attack_slots):
        for role in roles:
            maker.ensure(dirs.attackers, _attacker_thing(role, slot), role, [default_policy])
    return PrepareReport(tuple(maker.made), tuple(maker.reused), maker.revoked)


# --------------------------------------------------------------------------------------------- loading (workers)

def _load(directory: Path, thing: str, ca_file: str | None, what: str) -> DeviceIdentity:
    try:
        return DeviceIdentity.load(directory / thing, ca_file=ca_file, thing_name=thing)
    except IdentityError as exc:
        raise PlanError(f"{what}: {exc}; the run prepares these identities in the master's home "
                        f"(`iotgate loadtest`); a worker on another machine needs a copy of {directory.parent}") from None


def load_observer(dirs: LoadtestDirs, index: int, ca_file: str | None = None) -> DeviceIdentity:
    return _load(dirs.observers, observer_name(index), ca_file, f"e2e observer of worker {index}")


@dataclasses.dataclass(frozen=True, slots=True)
class AttackSlot:
    """One attacker user's identities: kind -> identity (None for ``no-certificate``), the CA it trusts for the
    server, and the victim it spoofs."""

    slot: int
    identities: dict[str, DeviceIdentity | None]
    ca_file: str
    victim: str = VICTIM

    def client_id(self, kind: str) -> str:
        if kind == "client-id-spoof":
            return self.victim
        identity = self.identities[kind]
        return identity.thing_name if identity is not None else _attacker_thing(kind, self.slot)


def load_attack_slot(dirs: LoadtestDirs, slot: int, kinds: Sequence[str], ca_file: str) -> AttackSlot:
    identities: dict[str, DeviceIdentity | None] = {}
    for kind in kinds:
        role = _role(kind)
        identities[kind] = None if role is None else _load(dirs.attackers, _attacker_thing(role, slot), ca_file,
                                                           f"attacker {kind} (slot {slot})")
    return AttackSlot(slot, identities, ca_file)


def pool_names(devices_dir: Path, prefix: str) -> list[str]:
    """The pool: thing names of the complete device directories starting with ``prefix``, sorted."""
    try:
        entries = list(devices_dir.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p.name for p in entries
                  if p.name.startswith(prefix) and not p.name.startswith(".") and DeviceFiles(p).complete())
