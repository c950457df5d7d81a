"""Backoff delays, process limits and source addresses, identity loading: the device side's small parts."""

from __future__ import annotations

import resource
import socket

import pytest

from devices.backoff import Backoff
from devices.identity import DeviceFiles, DeviceIdentity, IdentityError, load_identities
from devices.limits import LOOPBACK_SOURCES, bind_source, raise_open_file_limit, source_addresses

# --------------------------------------------------------------------------------------------- backoff

BACKOFF = [
    # name, kwargs, random value, delays of the first attempts
    ("no jitter doubles up to the cap", dict(base=1, cap=10, jitter="none"), 0.3, [1, 2, 4, 8, 10, 10]),
    ("full jitter at r=1 is the ceiling", dict(base=1, cap=10), 1.0, [1, 2, 4, 8, 10, 10]),
    ("full jitter at r=0.5 is half of it", dict(base=1, cap=10), 0.5, [0.5, 1, 2, 4, 5, 5]),
    ("full jitter at r=0 retries at once", dict(base=1, cap=10), 0.0, [0, 0, 0]),
    ("equal jitter keeps half fixed", dict(base=2, cap=16, jitter="equal"), 0.0, [1, 2, 4, 8, 8]),
    ("factor 3", dict(base=1, cap=100, factor=3, jitter="none"), 0.0, [1, 3, 9, 27, 81, 100]),
    ("decorrelated at r=1 triples the previous delay", dict(base=1, cap=50, jitter="decorrelated"), 1.0,
     [3, 9, 27, 50, 50]),
    ("decorrelated at r=0 stays at base", dict(base=1, cap=50, jitter="decorrelated"), 0.0, [1, 1, 1]),
]


@pytest.mark.parametrize("name,kwargs,r,delays", BACKOFF, ids=[b[0] for b in BACKOFF])
def test_backoff_delays(name, kwargs, r, delays) -> None:
    backoff = Backoff(random=lambda: r, **kwargs)
    assert [backoff.next_delay() for _ in delays] == pytest.approx(delays)
    assert backoff.attempts == len(delays)


def test_backoff_resets_only_after_a_stable_connection() -> None:
    now = [0.0]
    backoff = Backoff(base=1, cap=60, jitter="none", reset_after=30, clock=lambda: now[0])
    for _ in range(3):
        backoff.next_delay()
    backoff.connected()
    now[0] = 10.0
    backoff.disconnected()                 # flapped after 10 s: keep backing off
    assert backoff.next_delay() == 8
    backoff.connected()
    now[0] = 45.0
    backoff.disconnected()                 # stayed up 35 s: start over
    assert backoff.next_delay() == 1


def test_backoff_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(base=1, cap=5, jitter="none")
    backoff.attempts = 10_000
    assert backoff.next_delay() == 5


@pytest.mark.parametrize("kwargs,message", [
    (dict(base=0), "0 < base"), (dict(base=2, cap=1), "base <= cap"), (dict(factor=0.5), "factor >= 1"),
    (dict(jitter="wild"), "jitter must be one of"),
])
def test_backoff_arguments_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


# --------------------------------------------------------------------------------------------- limits

def test_source_addresses_spread_over_loopback_only() -> None:
    spread = source_addresses(600, "127.0.0.1")
    assert spread[0] == "127.0.0.2" and spread[252] == "127.0.0.254" and spread[253] == "127.0.0.2"
    assert set(spread) == set(LOOPBACK_SOURCES) and "127.0.0.1" not in spread
    assert source_addresses(3, "localhost") == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert source_addresses(2, "10.1.2.3") == [None, None]
    assert source_addresses(2, "::1") == [None, None]
    assert source_addresses(1, "example.com") == [None]


def test_bind_source_lets_connect_choose_the_port() -> None:
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        bind_source(client, "127.0.0.9")
        client.connect(server.getsockname())
        conn, peer = server.accept()
        conn.close()
        assert peer[0] == "127.0.0.9" and peer[1] != 0


def test_raise_open_file_limit_reaches_the_hard_limit_and_never_lowers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        same = raise_open_file_limit(wanted=min(soft, 64))
        assert same.soft == soft and same.enough
        raised = raise_open_file_limit()
        assert raised.before == soft and raised.soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised.soft >= soft
        assert "open files: soft limit" in raised.describe()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_raise_open_file_limit_reports_what_it_could_not_get() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
        result = raise_open_file_limit(wanted=nr_open + 1)
        assert not result.enough and "wanted" in result.describe()
        assert result.soft <= nr_open
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------------------------- identity

def _device_dir(base, name: str):
    d = base / name
    d.mkdir()
    for f in ("device.pem", "device.key", "root-ca.pem"):
        (d / f).write_text(f)
    return d


def test_identity_load_and_fleet_listing(tmp_path) -> None:
    for name in ("dev-00002", "dev-00001"):
        _device_dir(tmp_path, name)
    (tmp_path / ".dev-00003.123.tmp").mkdir()       # an interrupted provisioning leaves these
    (tmp_path / "half").mkdir()                      # and incomplete directories are skipped
    (tmp_path / "half" / "device.pem").write_text("x")
    ids = load_identities(tmp_path)
    assert [i.thing_name for i in ids] == ["dev-00001", "dev-00002"]
    first = ids[0]
    assert first.cert_file.endswith("dev-00001/device.pem") and first.key_file.endswith("dev-00001/device.key")
    assert first.ca_file == str(DeviceFiles(tmp_path / "dev-00001").root_ca)
    assert load_identities(tmp_path, ["dev-00002"])[0].thing_name == "dev-00002"


def test_identity_with_another_ca(tmp_path) -> None:
    d = _device_dir(tmp_path, "dev-1")
    amazon = tmp_path / "AmazonRootCA1.pem"
    amazon.write_text("ca")
    identity = DeviceIdentity.load(d, ca_file=amazon, thing_name="thing-1")
    assert identity.ca_file == str(amazon) and identity.thing_name == "thing-1"
    with pytest.raises(IdentityError, match="CA certificate is missing; pass an existing CA file"):
        DeviceIdentity.load(d, ca_file=tmp_path / "nope.pem")


def test_identity_missing_files_say_what_to_do(tmp_path) -> None:
    d = _device_dir(tmp_path, "dev-1")
    (d / "device.key").unlink()
    with pytest.raises(IdentityError, match=r"device\.key: the device's private key is missing; provision it"):
        DeviceIdentity.load(d)
    with pytest.raises(IdentityError, match="no devices directory"):
        load_identities(tmp_path / "absent")
