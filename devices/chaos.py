"""Chaos and identity lifecycle for a fleet run.

* ``disconnect``: a share of the connected devices sends DISCONNECT and connects again (after its backoff);
* ``abort``: a share of them drops its socket without a word (a crash, a pulled cable) and reconnects;
* ``upstream-kill``: the broker behind the gateway is killed (SIGKILL) and started again after ``downtime`` --
  only when the simulator was given the broker it may kill (:class:`UpstreamControl`);
* rotation: a device makes a new key and CSR, gets a certificate for it, reconnects with it, and its old
  certificate is then deactivated; many at once is a rotation storm.

Choosing who is hit is pure (:func:`pick`), with the random source passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random as _random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from devices.identity import (PREVIOUS_CERT, PREVIOUS_KEY, DeviceIdentity, make_key_and_csr,
                              rotate_device_files)

T = TypeVar("T")


def pick(members: Sequence[T], fraction: float, rng: _random.Random) -> list[T]:
    """``ceil(fraction * n)`` members chosen at random (none for fraction 0), in their original order."""
    if fraction <= 0 or not members:
        return []
    n = min(len(members), math.ceil(fraction * len(members)))
    chosen = set(rng.sample(range(len(members)), n))
    return [m for i, m in enumerate(members) if i in chosen]


def spread_offsets(count: int, spread: float) -> list[float]:
    """Start offsets (seconds) for ``count`` actions spread evenly over ``spread`` seconds (0: all at once)."""
    if count <= 1 or spread <= 0:
        return [0.0] * count
    return [spread * i / (count - 1) for i in range(count)]


class UpstreamControl(Protocol):
    """A broker the simulator may kill and start again (e.g. :class:`gateway.upstream.mosquitto.MosquittoProcess`)."""

    def kill(self) -> None: ...

    def start(self) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Rotated:
    identity: DeviceIdentity          # the new one, in the device's own directory
    previous: DeviceIdentity          # the old pair, kept as device.previous.* until retired
    new_certificate_id: str
    old_certificate_id: str | None


def rotate_identity(device_dir: Path, thing: str, *, issuer, register: Callable[..., str],
                    old_certificate_id: str | None, now: dt.datetime, ca_file: str | None = None) -> Rotated:
    """Device side: new key + CSR; issuer side: sign and register it (ACTIVE, same thing and policies);
    device side again: install it, keeping the old pair as ``device.previous.*``. Deactivating the old
    certificate is the caller's next step, once the device is connected with the new one."""
    key, csr = make_key_and_csr(thing)
    cert = issuer.sign_device_csr(csr, thing, now=now)
    pem = issuer.pem_with_chain(cert)
    new_id = register(thing, cert, pem)
    rotate_device_files(device_dir, key, pem)
    identity = DeviceIdentity.load(device_dir, ca_file=ca_file, thing_name=thing)
    previous = DeviceIdentity(thing, str(device_dir / PREVIOUS_CERT), str(device_dir / PREVIOUS_KEY),
                              identity.ca_file)
    return Rotated(identity, previous, new_id, old_certificate_id)
