"""The demo's attacker rows: only what the gateway did is "refused"; a dead or silent target is inconclusive."""

from __future__ import annotations

import importlib.util
import queue
import ssl
from pathlib import Path

import pytest

from devices.reference import ClosedBeforeConnack

_spec = importlib.util.spec_from_file_location("demo", Path(__file__).parents[2] / "deploy" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def _raises(exc: BaseException):
    def fn():
        raise exc
    return fn


def _ssl_error(reason: str) -> ssl.SSLError:
    return ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')} (_ssl.c:2580)")


@pytest.mark.parametrize(("exc", "outcome", "detail"), [
    (_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "refused", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    (_ssl_error("SSLV3_ALERT_BAD_CERTIFICATE"), "refused", "SSLV3_ALERT_BAD_CERTIFICATE"),
    (ConnectionResetError(104, "Connection reset by peer"), "refused", "closed by the server"),
    (ClosedBeforeConnack("disconnected before CONNACK (7)"), "refused", "after CONNECT"),
    # nothing listens, nothing answers, or this side gave up: not a refusal
    (ConnectionRefusedError(111, "Connection refused"), "inconclusive", "ConnectionRefusedError"),
    (TimeoutError("no CONNACK within 5 s"), "inconclusive", "no CONNACK"),
    (queue.Empty(), "inconclusive", "Empty"),
    (ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
     "inconclusive", "not a refusal"),
    (_ssl_error("WRONG_VERSION_NUMBER"), "inconclusive", "not a refusal"),
    (OSError(113, "No route to host"), "inconclusive", "OSError"),
])
def test_attempt_counts_only_the_servers_refusals(exc, outcome, detail):
    got, text = demo.attempt(_raises(exc))
    assert (got, detail in text) == (outcome, True), text


def test_attempt_passes_through_what_the_action_returned():
    assert demo.attempt(lambda: ("refused", "CONNACK reason 0x87")) == ("refused", "CONNACK reason 0x87")
    assert demo.attempt(lambda: ("allowed", "CONNACK 0")) == ("allowed", "CONNACK 0")
