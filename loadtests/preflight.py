"""Checks made before a run starts, by `iotgate loadtest` and by the locustfile's master: enough identities,
and a target that answers at all. Either failing stops the run before any user starts, with a message that
says what is missing and what to do.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from certs.errors import IotgateError

from .identities import pool_names
from .plan import PlanError, identities_needed, names_digest

__all__ = ["PoolCheck", "TargetUnreachable", "check_pool", "check_reachable"]


class TargetUnreachable(IotgateError):
    """The target did not accept a TCP connection: nothing about authentication can be learned from it."""

    exit_code = 2


class PoolCheck:
    """The master's view of the pool: its size and digest, handed to every worker."""

    __slots__ = ("digest", "names", "needed")

    def __init__(self, names: list[str], needed: int) -> None:
        self.names = names
        self.needed = needed
        self.digest = names_digest(names)


def check_pool(home: Path, prefix: str, users: int, workers: int) -> PoolCheck:
    """The home's identities with ``prefix``, or a PlanError saying how many are needed and how to get them."""
    needed = identities_needed(users, workers)
    names = pool_names(home / "devices", prefix)
    if len(names) < needed:
        spread = f"{users} device users over {workers} workers" if workers > 1 else f"{users} device users"
        raise PlanError(
            f"{home / 'devices'} holds {len(names)} device identit{'y' if len(names) == 1 else 'ies'} named "
            f"{prefix}*; this run needs {needed} ({spread}, one identity per user, disjoint slices per worker). "
            f"Provision them with `iotgate --home {home} fleet provision --count {needed} --prefix {prefix}`")
    return PoolCheck(names, needed)


def check_reachable(host: str, port: int, what: str, timeout: float = 3.0) -> None:
    """One TCP connect to the target; TargetUnreachable naming the address when it does not answer."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as exc:
        problem = f"cannot resolve {host} ({exc.strerror})"
    except TimeoutError:
        problem = f"no answer within {timeout:g} s"
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "")
        problem = f"{os.strerror(exc.errno) if exc.errno else exc}" + (f" ({name})" if name else "")
    raise TargetUnreachable(f"the {what} at {address} is unreachable: {problem}; nothing was measured. Start it, "
                            "or point --endpoint at where it listens")
