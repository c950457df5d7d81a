"""Identities of one fleet run.

* The fleet's devices are the fleet: provisioned once into ``<home>/devices`` (a re-run reuses them), or read
  from a devices directory when there is no local registry (AWS IoT Core).
* The run's own identities -- the operator (observer and commander, with a broad policy), the probe that proves
  the target answers, the attackers and their victims -- are made fresh for each run in a scratch area
  (``<home>/fleet-run/identities``, or a temporary directory without a home), never among the fleet's devices.
  At the end every certificate the run registered for them is detached from its policies and set INACTIVE
  (REVOKED stays REVOKED) and the scratch files are deleted, unless the run keeps them (``--keep-identities``):
  the operator's broad policy never stays attached to an ACTIVE certificate.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from certs.authority import certificate_id
from devices.identity import DeviceIdentity, IdentityError, make_key_and_csr, write_device_dir
from devices.plan import FleetError, FleetPlan, LocalPKI
from devices.provisioning import default_workers, ensure_policy, provision_fleet, register_certificate, thing_names
from devices.scenario import MAX_DEVICES, Group, allocate
from devices.token_attacks import (DEVICE_AUTHORIZER, DEVICE_KEY_IDENTITY, DEVICE_KEY_POLICY, DEVICE_TOKEN_POLICY,
                                   TokenWorld)
from devices.token_devices import SigV4Signer, TokenIdentity
from gateway.registry import NotFound

OPERATOR_THING = "sim-operator"
PROBE_THING = "sim-probe"
OPERATOR_POLICY_NAME = "iotgate-fleet-operator"
OPERATOR_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/cmd/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/*"}
  ]
}
"""
RUN_CERT_DAYS = 2                   # the run's own certificates: long enough for any run, short if one is left


class FleetIdentity(NamedTuple):
    thing: str
    group: Group
    identity: DeviceIdentity
    directory: Path
    certificate_id: str | None


def cert_id_of(path: str) -> str | None:
    try:
        return certificate_id(x509.load_pem_x509_certificate(Path(path).read_bytes()))
    except (OSError, ValueError):
        return None


class RunIdentities:
    """Makes, loads and finally retires the identities of one run (thread-safe: setup and rotations call it from
    worker threads)."""

    def __init__(self, plan: FleetPlan) -> None:
        self.plan = plan
        self.local: LocalPKI | None = plan.local
        self._tmp: tempfile.TemporaryDirectory | None = None
        if self.local is not None:
            self.scratch = self.local.store.home / "fleet-run" / "identities"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="iotgate-fleet-run-")
            self.scratch = Path(self._tmp.name)
        self.created: list[str] = []         # certificate ids this run registered for its own identities
        self._lock = threading.Lock()
        self._token_world: TokenWorld | None = None
        self._device_world: TokenWorld | None = None

    # ------------------------------------------------------------------ the fleet

    def _need_local(self) -> LocalPKI:
        if self.local is None:
            raise FleetError("this needs a local registry (a home), not a devices directory")
        return self.local

    def policy_for(self, group: Group) -> str:
        local = self._need_local()
        with self._lock:
            return ensure_policy(local.registry, group.policy)

    def fleet(self) -> list[FleetIdentity]:
        """Identities for every group: provisioned into the home when there is a local registry."""
        scenario = self.plan.scenario
        counts = allocate(scenario.groups, self.plan.devices)
        total = sum(counts.values())
        if total > MAX_DEVICES:
            raise FleetError(f"the scenario asks for {total} devices; at most {MAX_DEVICES} per run")
        local = self.local
        devices_dir = local.store.paths.devices if local else self.plan.devices_dir
        out = []
        for group in scenario.groups:
            names = thing_names(group.thing_prefix, counts[group.name])
            if not names:
                continue
            if group.auth != "certificate":
                out.extend(self._credential_devices(group, names))
                continue
            if local is not None:
                policy = self.policy_for(group)
                workers = 1 if len(names) < 200 else default_workers()
                with self._lock:
                    provision_fleet(local.store, local.registry, local.issuer, names, policies=[policy],
                                    key_type="ec-p256", workers=workers, now=local.now, days=30)
            for thing in names:
                directory = Path(devices_dir) / thing
                try:
                    identity = DeviceIdentity.load(directory, ca_file=self.plan.ca_file, thing_name=thing)
                except IdentityError as exc:
                    raise FleetError(f"group {group.name}: {exc}") from None
                out.append(FleetIdentity(thing, group, identity, directory, cert_id_of(identity.cert_file)))
        return out

    def _credential_devices(self, group: Group, names: list[str]) -> list[FleetIdentity]:
        """Devices without certificates: a token from the run's identity provider, or an access key each."""
        plan = self.plan
        why = ("needs --target gateway" if plan.target != "gateway" else "needs a local registry" if self.local is None
               else "needs the gateway's token listener: pass --token-port" if plan.token_port is None
               else "runs on the native or awsiotsdk connector" if plan.connector not in ("native", "awsiotsdk")
               else "")
        if why:
            raise FleetError(f"group {group.name}: auth = {group.auth!r} {why}")
        if not all(n.startswith("sim-") for n in names) and group.auth == "sigv4":
            raise FleetError(f"group {group.name}: a sigv4 group's thing names start with sim- (its prefix)")
        world = self.device_world()
        lifetime = int(plan.run_duration) + 900           # the gateway ends a session when its token expires
        out = []
        for thing in names:
            if group.auth == "token":
                def credential(now, thing=thing):
                    return world.username(world.token(thing, now, lifetime=lifetime))

                def sdk_auth(now, thing=thing):
                    return world.sdk_auth(world.token(thing, now, lifetime=lifetime))
            else:
                with self._lock:
                    akid, secret = world.add_key(thing)
                credential = SigV4Signer(akid, secret, world.region, plan.endpoint.sni)

                def sdk_auth(now, akid=akid, secret=secret):
                    return {"region": world.region, "access_key_id": akid, "secret": secret}
            identity = TokenIdentity(thing, "", "", plan.server_ca, auth=group.auth, port=plan.token_port,
                                     credential=credential, sdk_auth=sdk_auth)
            out.append(FleetIdentity(thing, group, identity, None, None))
        return out

    def device_world(self) -> TokenWorld:
        """The identity provider, authorizer and policies of the run's token and SigV4 devices."""
        local = self._need_local()
        with self._lock:
            if self._device_world is None:
                self._device_world = TokenWorld.create(
                    local.registry, local.store.home, self.scratch, authorizer=DEVICE_AUTHORIZER,
                    identity=DEVICE_KEY_IDENTITY, policy=DEVICE_TOKEN_POLICY, key_policy=DEVICE_KEY_POLICY)
            return self._device_world

    def register(self, thing: str, cert: x509.Certificate, pem: bytes, status: str = "ACTIVE",
                 policies: tuple[str, ...] = ()) -> str:
        """Register a certificate of a fleet device (a rotation): it belongs to the fleet and stays."""
        local = self._need_local()
        with self._lock:
            pols = list(policies) or [ensure_policy(local.registry, None)]
            return register_certificate(local.registry, thing, cert, pem, local.issuer.ca_id, pols, status=status)

    def attached_policies(self, certificate_id: str) -> tuple[str, ...]:
        local = self._need_local()
        with self._lock:
            return tuple(p.name for p in local.registry.list_attached_policies(certificate_id))

    def set_status(self, certificate_id: str, status: str) -> None:
        local = self._need_local()
        with self._lock:
            local.registry.set_certificate_status(certificate_id, status)

    # ------------------------------------------------------------------ the run's own

    def issue(self, thing: str, *, policies: tuple[str, ...] = (), status: str | None = "ACTIVE",
              not_before: dt.datetime | None = None, days: int = RUN_CERT_DAYS) -> DeviceIdentity:
        """A run-scoped identity signed by the home's issuing CA, written to the scratch area and (unless
        ``status`` is None: an unregistered certificate) registered with ``status`` and ``policies`` (default:
        the built-in device policy). It is retired at the end of the run."""
        local = self._need_local()
        key, csr = make_key_and_csr(thing)
        cert = local.issuer.sign_device_csr(csr, thing, now=not_before or local.now, days=days)
        pem = local.issuer.pem_with_chain(cert)
        identity = self.write(thing, key, pem)
        if status is not None:
            with self._lock:
                pols = list(policies) or [ensure_policy(local.registry, None)]
                cert_id = register_certificate(local.registry, thing, cert, pem, local.issuer.ca_id, pols,
                                               status=status)
                self.created.append(cert_id)
        return identity

    def write(self, thing: str, key, chain_pem: bytes) -> DeviceIdentity:
        """Write a run-scoped identity's files (verifying the server with the run's CA)."""
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        root_pem = self.local.store.root_pem() if self.local is not None else Path(self.plan.server_ca).read_bytes()
        write_device_dir(self.scratch, thing, key, chain_pem, root_pem)
        return DeviceIdentity.load(self.scratch / thing, ca_file=self.plan.ca_file, thing_name=thing)

    def operator(self) -> DeviceIdentity:
        """The operator: observes telemetry and sends commands (a policy of its own, broad on purpose)."""
        local = self._need_local()
        with self._lock:
            try:
                local.registry.get_policy(OPERATOR_POLICY_NAME)
            except NotFound:
                local.registry.create_policy(OPERATOR_POLICY_NAME, OPERATOR_POLICY)
        return self.issue(OPERATOR_THING, policies=(OPERATOR_POLICY_NAME,))

    def probe(self, fleet: list[FleetIdentity]) -> DeviceIdentity:
        """A legitimate identity that proves the target answers: made for the run when there is a home, else
        the first device of the fleet."""
        if self.local is not None:
            return self.issue(PROBE_THING)
        if not fleet:
            raise FleetError("a run needs one legitimate device to prove the target answers before it trusts a "
                             "refusal: add a device group to the scenario, or --devices 1")
        return fleet[0].identity

    # ------------------------------------------------------------------ the end

    def token_world(self) -> TokenWorld:
        """The run's identity provider, custom authorizer and SigV4 key (made once, on first use)."""
        with self._lock:
            if self._token_world is None:
                if self.local is None:
                    raise FleetError("token attackers need a local registry")
                self._token_world = TokenWorld.create(self.local.registry, self.local.store.home, self.scratch)
            return self._token_world

    def retire(self) -> list[str]:
        """Detach and deactivate every certificate the run made for itself and delete its files, unless the plan
        keeps them; delete the run's authorizer and access key. Returns notes for the report."""
        notes = []
        local = self.local
        if local is not None and not self.plan.keep_identities:
            worlds = [w for w in (self._token_world, self._device_world) if w is not None]
            for world in worlds:
                world.retire(local.registry)
            if worlds:
                notes.append("the run's custom authorizers and SigV4 access keys were deleted")
        if local is not None and self.created:
            if self.plan.keep_identities:
                notes.append(f"kept the run's {len(self.created)} own certificate(s) (operator, probe, attackers) "
                             f"and their files in {self.scratch}")
                return notes
            with self._lock:
                for cert_id in self.created:
                    for policy in local.registry.list_attached_policies(cert_id):
                        local.registry.detach_policy(policy.name, cert_id)
                    if local.registry.get_certificate(cert_id).status == "ACTIVE":
                        local.registry.set_certificate_status(cert_id, "INACTIVE")
            notes.append(f"the run's {len(self.created)} own certificate(s) (operator, probe, attackers) were "
                         "detached from their policies and set INACTIVE")
        if not self.plan.keep_identities:
            self.remove_files()
        return notes

    def remove_files(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        elif self.scratch.exists():
            shutil.rmtree(self.scratch)
