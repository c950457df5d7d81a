"""What a fleet run is asked to do (:class:`FleetPlan`), the home it may provision into (:class:`LocalPKI`), the
input checks of the CLI's options, and the errors that end a run without a verdict.

Exit codes of `iotgate fleet run`: 0 PASS, 1 FAIL, 2 the run could not start or its target did not prove it
answers (:class:`FleetError`, :class:`TargetError`), 3 a part of the run raised (:class:`RunPartError`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from certs.authority import CertificateAuthority
from certs.errors import IotgateError
from certs.store import PKIStore
from devices.client import Endpoint
from devices.report import Gate
from devices.scenario import MAX_DEVICES, MAX_DURATION, MAX_RATE, Scenario
from gateway.registry import Registry

TARGETS = ("gateway", "mosquitto", "aws")


class UpstreamControl(Protocol):
    """A broker the simulator may kill and start again (e.g. :class:`gateway.upstream.mosquitto.MosquittoProcess`)."""

    def kill(self) -> None: ...

    def start(self) -> object: ...


class FleetError(IotgateError):
    """A run cannot start: the message says what to change."""


class TargetError(IotgateError):
    """The target did not prove that it answers (TCP, TLS with a server certificate that verifies, a legitimate
    CONNECT): the run has no verdict. The message names the address and what failed."""


class RunPartError(IotgateError):
    """A part of the run raised: the run ends as an error naming the part and the exception."""

    exit_code = 3

    def __init__(self, part: str, exc: BaseException) -> None:
        self.part = part
        self.error = exc
        super().__init__(f"the fleet run failed in its {part} part: {type(exc).__name__}: {exc}")


def check_endpoint(target: str, host: str) -> None:
    """Refuse a non-loopback endpoint unless the target is AWS IoT Core."""
    if target not in TARGETS:
        raise FleetError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "aws":
        return
    if host == "localhost":
        return
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError as exc:
            raise FleetError(f"--endpoint {host}: cannot resolve it ({exc})") from None
    if not all(a.is_loopback for a in addresses):
        raise FleetError(f"--endpoint {host} is not a loopback address; a {target} target is simulated on this "
                         "machine only (use --target aws for AWS IoT Core)")


def parse_endpoint(text: str, default_port: int = 8883) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), default_port
    try:
        value = int(port)
    except ValueError:
        raise FleetError(f"--endpoint {text}: the port must be a number") from None
    if not 0 < value < 65536:
        raise FleetError(f"--endpoint {text}: the port must be 1..65535")
    return host.strip("[]"), value


def parse_rate(text: str) -> float:
    """``"50/s"``, ``"50"`` -> 50.0 connects per second."""
    raw = text.strip().removesuffix("/s")
    try:
        value = float(raw)
    except ValueError:
        raise FleetError(f"--rate {text}: write connects per second, e.g. 50/s") from None
    if not 0 < value <= MAX_RATE:
        raise FleetError(f"--rate {text}: must be more than 0 and at most {MAX_RATE:g}/s")
    return value


@dataclasses.dataclass(frozen=True)
class LocalPKI:
    """The home's PKI and registry: lets the runner provision devices, attackers, the operator and rotations."""

    store: PKIStore
    registry: Registry
    issuer: CertificateAuthority
    now: dt.datetime


@dataclasses.dataclass
class FleetPlan:
    target: str
    endpoint: Endpoint
    devices: int
    scenario: Scenario
    duration: float | None = None     # None: the scenario's
    rate: float | None = None         # connects per second; None: the scenario's (or all at once)
    connector: str = "native"
    local: LocalPKI | None = None
    devices_dir: Path | None = None   # identities when there is no local registry
    ca_file: str | None = None        # trust anchor for the server (AWS: Amazon Root CA 1)
    upstream: UpstreamControl | None = None
    slo: tuple[Gate, ...] = ()
    seed: int = 0
    strict: bool = False              # a skipped check fails the run
    keep_identities: bool = False     # keep the run's own identities (operator, probe, attackers) afterwards
    token_port: int | None = None     # the gateway's token listener (custom authorizers, SigV4 over WebSocket)
    on_tick: Callable[[dict], None] | None = None
    tick: float = 0.5

    def validate(self) -> None:
        check_endpoint(self.target, self.endpoint.host)
        if not 0 <= self.devices <= MAX_DEVICES:
            raise FleetError(f"--devices must be 0..{MAX_DEVICES}, not {self.devices}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise FleetError(f"--duration must be more than 0 and at most {MAX_DURATION:g} s")
        if self.local is None and self.devices_dir is None:
            raise FleetError("no identities: give a home with a registry, or a devices directory")
        if self.local is None and self.ca_file is None:
            raise FleetError("no CA file for the server: pass --ca-file")

    @property
    def run_duration(self) -> float:
        return self.duration if self.duration is not None else self.scenario.duration

    @property
    def server_ca(self) -> str:
        """The CA every simulated client verifies the server with."""
        if self.ca_file is not None:
            return self.ca_file
        assert self.local is not None
        return str(self.local.store.paths.root_cert)
