"""SigV4 query-string verification, against botocore's signer as an independent reference, and its refusals."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.auth import sigv4
from gateway.auth.access_keys import ReplayCache
from gateway.auth.secrets import SecretBox, SecretError, token_digest, token_matches

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
HEADERS = (("host", "localhost"), ("upgrade", "websocket"), ("connection", "Upgrade"),
           ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), ("sec-websocket-version", "13"))


def botocore_target(host: str, token: str | None, expires: int = 300) -> tuple[str, datetime]:
    request = AWSRequest(method="GET", url=f"https://{host}/mqtt")
    SigV4QueryAuth(Credentials(AKID, SECRET, token), sigv4.SERVICE, "us-east-1", expires=expires).add_auth(request)
    url = request.prepare().url
    target = url[url.index("/mqtt"):]
    return target, sigv4.parse("GET", target, [("host", host)]).signed_at


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLE//token+/="])
@pytest.mark.parametrize("host", ["localhost", "localhost:8443"])
def test_botocore_presigned_urls_verify(token, host):
    target, signed_at = botocore_target(host, token)
    req = sigv4.parse("GET", target, [("host", host), ("connection", "Upgrade")])
    sigv4.check_scope(req, "us-east-1")
    sigv4.check_time(req, signed_at + timedelta(seconds=10))
    sigv4.verify(req, SECRET)
    assert req.session_token == token and req.access_key_id == AKID
    with pytest.raises(sigv4.SigV4Error) as exc:
        sigv4.verify(req, SECRET[:-1] + "X")
    assert exc.value.key == "signature_mismatch"


def test_own_presign_matches_the_sdk_form_and_verifies():
    target = sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW, session_token="tok",
                           extra_headers=(("connection", "Upgrade"),))
    assert "X-Amz-SignedHeaders=connection%3Bhost" in target
    assert target.index("X-Amz-Security-Token") < target.index("X-Amz-Signature")
    req = sigv4.parse("GET", target, HEADERS)
    sigv4.verify(req, SECRET)
    # a changed signed header value breaks the signature; an unsigned header does not
    tampered = tuple(("connection", "keep-alive, Upgrade") if k == "connection" else (k, v) for k, v in HEADERS)
    with pytest.raises(sigv4.SigV4Error, match="does not match"):
        sigv4.verify(sigv4.parse("GET", target, tampered), SECRET)
    other_key = tuple(("sec-websocket-key", "b3RoZXI=") if k == "sec-websocket-key" else (k, v) for k, v in HEADERS)
    sigv4.verify(sigv4.parse("GET", target, other_key), SECRET)


def test_the_token_is_not_signed_but_a_swapped_query_parameter_breaks_it():
    target = sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW, session_token="tok")
    sigv4.verify(sigv4.parse("GET", target.replace("tok", "other"), HEADERS), SECRET)  # verified against the key
    extra = target.replace("X-Amz-Signature", "extra=1&X-Amz-Signature")
    with pytest.raises(sigv4.SigV4Error, match="does not match"):
        sigv4.verify(sigv4.parse("GET", extra, HEADERS), SECRET)


@pytest.mark.parametrize("offset, key", [
    (timedelta(seconds=0), None),
    (timedelta(seconds=299), None),
    (timedelta(seconds=301), "signature_expired"),
    (timedelta(seconds=-299), None),
    (timedelta(seconds=-301), "signature_not_yet_valid"),
])
def test_five_minute_window(offset, key):
    req = sigv4.parse("GET", sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW), HEADERS)
    if key is None:
        sigv4.check_time(req, NOW + offset)
    else:
        with pytest.raises(sigv4.SigV4Error) as exc:
            sigv4.check_time(req, NOW + offset)
        assert exc.value.key == key and exc.value.access_key_id == AKID


def test_x_amz_expires_extends_the_window():
    req = sigv4.parse("GET", sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW, expires=86400), HEADERS)
    sigv4.check_time(req, NOW + timedelta(hours=23))
    with pytest.raises(sigv4.SigV4Error, match="X-Amz-Expires"):
        sigv4.check_time(req, NOW + timedelta(hours=25))


def test_scope_must_name_this_region_and_service():
    req = sigv4.parse("GET", sigv4.presign("localhost", AKID, SECRET, "eu-west-1", NOW), HEADERS)
    with pytest.raises(sigv4.SigV4Error, match="region 'eu-west-1'"):
        sigv4.check_scope(req, "us-east-1")
    bad = sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW).replace("iotdevicegateway", "execute-api")
    with pytest.raises(sigv4.SigV4Error, match="service 'execute-api'"):
        sigv4.check_scope(sigv4.parse("GET", bad, HEADERS), "us-east-1")


GOOD = sigv4.presign("localhost", AKID, SECRET, "us-east-1", NOW)


@pytest.mark.parametrize("target, key, match", [
    ("/mqtt", "signature_missing", "not signed"),
    (GOOD.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"), "signature_malformed", "X-Amz-Algorithm"),
    (GOOD.replace("%2Faws4_request", ""), "signature_malformed", "X-Amz-Credential"),
    (GOOD.replace("X-Amz-Date=20261201T120000Z", "X-Amz-Date=2026-12-01"), "signature_malformed", "X-Amz-Date"),
    (GOOD.replace("X-Amz-Date=20261201", "X-Amz-Date=20261202"), "signature_malformed", "credential date"),
    (GOOD.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=upgrade"), "signature_malformed", "host"),
    (GOOD.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host%3Bx-missing"), "signature_malformed",
     "x-missing"),
    (GOOD[:-4], "signature_malformed", "64 lower-case hex"),
    (GOOD + "&X-Amz-Date=20261201T120000Z", "signature_malformed", "more than once"),
    (GOOD.replace("X-Amz-SignedHeaders", "X-Amz-Expires=0&X-Amz-SignedHeaders"), "signature_malformed",
     "X-Amz-Expires"),
], ids=["unsigned", "algorithm", "credential", "date", "scope-date", "no-host", "absent-header", "short-signature",
        "duplicate", "expires-zero"])
def test_malformed_requests(target, key, match):
    with pytest.raises(sigv4.SigV4Error, match=match) as exc:
        sigv4.parse("GET", target, HEADERS)
    assert exc.value.key == key


def test_replay_cache_accepts_each_signature_once_within_its_window():
    cache = ReplayCache(max_entries=2)
    assert cache.first_use("a", valid_until=100.0, now=0.0)
    assert not cache.first_use("a", valid_until=100.0, now=50.0)
    assert cache.first_use("a", valid_until=300.0, now=101.0)  # expired entries go: the window protects then
    assert cache.first_use("b", 300.0, 102.0) and cache.first_use("c", 300.0, 103.0)
    assert len(cache) == 2 and cache.evicted == 1


def test_replay_cache_shared_by_workers_accepts_a_signature_once_across_them(tmp_path):
    """`gateway run --workers N`: a signature used on one worker is refused on another (the same directory)."""
    shared = tmp_path / "sigv4-replay"
    one, two = ReplayCache(directory=shared), ReplayCache(directory=shared)
    assert one.first_use("sig", valid_until=100.0, now=0.0)
    assert not two.first_use("sig", valid_until=100.0, now=1.0)
    assert not one.first_use("sig", valid_until=100.0, now=2.0)
    assert two.first_use("other", valid_until=100.0, now=3.0)
    assert two.first_use("sig", valid_until=400.0, now=101.0)  # expired: the name is free again
    assert not one.first_use("sig", valid_until=400.0, now=102.0)
    assert shared.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in shared.iterdir())
    one.SWEEP_INTERVAL = 0.0
    one.first_use("late", valid_until=1000.0, now=500.0)  # sweeps what expired
    assert len(list(shared.iterdir())) == 1


def test_the_authenticator_keeps_the_shared_replay_cache_it_is_given(tmp_path):
    from gateway.auth.access_keys import SigV4Authenticator

    cache = ReplayCache(directory=tmp_path / "shared")
    assert SigV4Authenticator(None, replay=cache).replay is cache  # empty, hence falsy: not replaced


def _race(directory: str, start, results) -> None:
    start.wait()
    results.put(ReplayCache(directory=Path(directory)).first_use("raced", valid_until=1e12, now=time.time()))


def test_replay_cache_race_between_processes_has_one_winner(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "r"), start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    won = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(won) == [False, False, False, True]


def test_secret_box_seals_binds_and_refuses_other_keys(tmp_path):
    box = SecretBox.load(tmp_path, create=True)
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    sealed = box.seal(AKID, SECRET)
    assert SECRET not in sealed and box.open(AKID, sealed) == SECRET
    assert box.seal(AKID, SECRET) != sealed  # a fresh nonce each time
    with pytest.raises(SecretError, match="does not open"):
        box.open("AKIAOTHERKEY00000000", sealed)  # bound to its access key id
    with pytest.raises(SecretError, match="does not open"):
        SecretBox(b"\x00" * 32).open(AKID, sealed)
    with pytest.raises(SecretError, match="no key-encryption key"):
        SecretBox.load(tmp_path / "elsewhere")
    assert SecretBox.load(tmp_path).open(AKID, sealed) == SECRET
    assert token_matches("tok", token_digest("tok")) and not token_matches("tok2", token_digest("tok"))
