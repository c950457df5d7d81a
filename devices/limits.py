"""Process limits of a large simulated fleet: open files, and local source addresses.

Every device holds one socket, so 10,000 devices need more than the usual soft limit of 1024 open files:
:func:`raise_open_file_limit` lifts the soft limit to the hard limit (or to a requested number; a process with
CAP_SYS_RESOURCE raises the hard limit too, up to ``/proc/sys/fs/nr_open``). Child processes (a local Mosquitto
started by a benchmark) inherit the raised limit.

Connections from one source address to one server address share one range of ephemeral ports (32768-60999 by
default, ~28k), and every closed connection keeps its port in TIME_WAIT for a minute. Against a loopback
server, :func:`source_addresses` spreads connections over 127.0.0.2..127.0.0.254 (all of 127/8 is local on
Linux), which multiplies the port space by 253 and also spreads per-source limits of the server under test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import resource
import socket

__all__ = [
    "LOOPBACK_SOURCES",
    "OpenFileLimit",
    "bind_source",
    "raise_open_file_limit",
    "source_addresses",
]

#: Local addresses used for connections to a loopback server (127.0.0.1 itself is left to other clients).
LOOPBACK_SOURCES: tuple[str, ...] = tuple(f"127.0.0.{i}" for i in range(2, 255))

# Linux: pick the port at connect() time by the full 4-tuple instead of at bind() time by address alone, so a
# bound source address does not cap the ports to one per server (linux/in.h IP_BIND_ADDRESS_NO_PORT).
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclasses.dataclass(frozen=True, slots=True)
class OpenFileLimit:
    """RLIMIT_NOFILE before and after :func:`raise_open_file_limit`."""

    before: int
    soft: int
    hard: int
    wanted: int | None = None

    @property
    def enough(self) -> bool:
        return self.wanted is None or self.soft >= self.wanted

    def describe(self) -> str:
        text = f"open files: soft limit {self.before} -> {self.soft} (hard {self.hard})"
        if not self.enough:
            text += (f"; {self.wanted} wanted: raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE=, "
                     f"docker --ulimit nofile=N:N, or run with CAP_SYS_RESOURCE)")
        return text


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_file_limit(wanted: int | None = None) -> OpenFileLimit:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (default: the hard limit) and report what was reached.

    When ``wanted`` exceeds the hard limit, the hard limit is raised as well if the process may (root); if it
    may not, the soft limit ends at the hard limit and ``OpenFileLimit.enough`` is false. Never lowers a limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = hard if wanted is None else wanted
    if hard != infinite and target > hard:
        new_hard = min(target, _nr_open())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            hard = new_hard
        except (ValueError, OSError):
            pass  # not privileged: stay within the hard limit
    if hard != infinite:
        target = min(target, hard)
    if target == infinite:
        target = _nr_open()
    if soft == infinite or target <= soft:
        return OpenFileLimit(soft, soft, hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return OpenFileLimit(soft, target, hard, wanted)


def _is_loopback_v4(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def source_addresses(count: int, target_host: str) -> list[str | None]:
    """One local bind address per connection: round robin over 127.0.0.2..127.0.0.254 when ``target_host`` is
    IPv4 loopback (or ``localhost``), else ``None`` each (the kernel chooses)."""
    if not _is_loopback_v4(target_host):
        return [None] * count
    n = len(LOOPBACK_SOURCES)
    return [LOOPBACK_SOURCES[i % n] for i in range(count)]


def bind_source(sock: socket.socket, address: str) -> None:
    """Bind ``sock`` to a local ``address`` with its port chosen at connect time (see module docstring)."""
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass  # not Linux >= 4.2: the port is chosen by bind()
    sock.bind((address, 0))
