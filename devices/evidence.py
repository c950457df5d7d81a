"""What a client saw, read as evidence: a connect attempt, a publish or a subscription classified as got in,
refused in TLS, refused in MQTT, closed by the server, inconclusive or the device's own error. Pure.

    outcome, detail = classify_connect(connect_outcome)   # (Outcome.REFUSED_MQTT, "CONNACK NOT_AUTHORIZED (0x87)")

Only what comes from the server counts as a refusal:

* a TLS alert the server sent (``TLSV13_ALERT_CERTIFICATE_REQUIRED``), or the connection closed during the
  handshake without one; a server certificate that does not verify *here* is not the server refusing us, and a
  server that does not speak TLS at all is not either: both are inconclusive;
* a CONNACK, SUBACK or PUBACK failure code, or a DISCONNECT;
* the connection closed by the server after CONNECT (before any CONNACK).

TCP refused or unreachable, DNS, timeouts and a peer that does not speak MQTT are inconclusive: nothing was
proven either way. A run proves its target answers (:mod:`devices.probe`) before and after the attackers, so a
close without an alert cannot come from a target that closes everything.
"""

from __future__ import annotations

import errno
import re

from devices.client import ConnectOutcome, PublishResult, Reason, SubscribeResult
from devices.report import Outcome
from devices.tokens import ConnectResult
from gateway.mqtt import ReasonCode

# OpenSSL's reasons for an alert received from the peer: SSLV3_ALERT_BAD_CERTIFICATE, TLSV1_ALERT_UNKNOWN_CA,
# TLSV13_ALERT_CERTIFICATE_REQUIRED, ...
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_ALERT = re.compile(r"\b((?:SSLV3|TLSV1|TLSV13)_ALERT_[A-Z_]+)")
# failures on this side: the server's certificate did not verify, or the peer is not a TLS server
_LOCAL_TLS = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "Hostname mismatch", "hostname mismatch",
              "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
              "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD")
# the peer went away without an alert
_CLOSED_TLS = ("ECONNRESET", "EPIPE", "SSLEOFError", "EOF occurred", "UNEXPECTED_EOF", "Connection reset",
               "closed the connection", "AWS_IO_SOCKET_CLOSED", "AWS_ERROR_MQTT_UNEXPECTED_HANGUP")
# a connect flood counts as refused only when the server throttles it (rate or quota), not for other failures
THROTTLE_CODES_V5 = frozenset({0x88, 0x89, 0x97, 0x9F})
THROTTLE_CODES_V3 = frozenset({0x03})
# CONNACK codes that mean "you may not" (not "not now")
AUTH_REFUSALS_V3 = frozenset({0x04, 0x05})
AUTH_REFUSALS_V5 = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cause(detail: str) -> str:
    """The short cause of a close: ``[Errno 104] Connection reset by peer`` -> ``ECONNRESET``."""
    m = _ERRNO.search(detail)
    if m:
        return errno.errorcode.get(int(m.group(1)), detail)
    return detail.split(":")[0].strip() or "EOF"


def tls_alert(text: str) -> str | None:
    """The TLS alert named in an error text, if any."""
    m = _ALERT.search(text)
    return m.group(1) if m else None


def classify_tls_failure(detail: str) -> tuple[Outcome, str]:
    """A failed TLS handshake as evidence (``detail``: what the TLS stack said)."""
    alert = tls_alert(detail)
    if alert:
        return Outcome.REFUSED_TLS, f"TLS alert {alert}"
    if any(marker in detail for marker in _LOCAL_TLS):
        return Outcome.INCONCLUSIVE, _short(f"TLS failed on this side (not a refusal): {detail}")
    if any(marker in detail for marker in _CLOSED_TLS):
        return Outcome.REFUSED_TLS, "closed by the server during the TLS handshake (no TLS alert received)"
    return Outcome.REFUSED_TLS, _short(f"TLS handshake failed: {detail}")


def classify_connect(outcome: ConnectOutcome) -> tuple[Outcome, str]:
    """One connect attempt as evidence: the outcome and a short reason for reports."""
    reason = outcome.reason
    if outcome.ok:
        return Outcome.ALLOWED, "connected"
    if reason is Reason.REFUSED:
        return Outcome.REFUSED_MQTT, f"CONNACK {outcome.detail}"
    if reason is Reason.CLOSED:
        if outcome.code is not None:      # an MQTT 5 DISCONNECT before CONNACK
            return Outcome.REFUSED_MQTT, _short(outcome.detail)
        if outcome.stage == "tls":
            return classify_tls_failure(outcome.detail)
        why = _cause(outcome.detail)
        return Outcome.CLOSED, _short(f"closed by the server after CONNECT, before CONNACK ({why}; no TLS alert received)")
    if reason is Reason.TLS:
        return classify_tls_failure(outcome.detail)
    if reason is Reason.HTTP:
        return Outcome.REFUSED_HTTP, _short(f"WebSocket upgrade refused: {outcome.detail}", 200)
    if reason is Reason.IDENTITY:
        return Outcome.DEVICE_ERROR, _short(f"the device's own files: {outcome.detail}", 400)
    # DNS, TCP, TIMEOUT, PROTOCOL: the target did not answer as an MQTT server; nothing is proven
    return Outcome.INCONCLUSIVE, _short(f"{reason.value}: {outcome.detail}")


def is_auth_refusal(outcome: ConnectOutcome, level: int) -> bool:
    """A refusal that means "this identity may not" (a TLS refusal, an authorization CONNACK), not "not now"."""
    if outcome.ok:
        return False
    if outcome.reason is Reason.REFUSED and outcome.code is not None:
        return outcome.code in (AUTH_REFUSALS_V5 if level == 5 else AUTH_REFUSALS_V3)
    kind, _ = classify_connect(outcome)
    return kind in (Outcome.REFUSED_TLS, Outcome.REFUSED_HTTP)


def connect_detail(outcome: ConnectOutcome) -> str:
    """A connect attempt as a short reason for reports: ``CONNACK NOT_AUTHORIZED (0x87)``, ``TLS alert ...``."""
    return classify_connect(outcome)[1]


def publish_detail(result: PublishResult) -> str:
    if result.ok:
        return "PUBACK granted" if result.reason == "acked" else "published"
    if result.reason == "refused" and result.reason_code is not None:
        return f"PUBACK 0x{result.reason_code:02X}"
    return f"publish {result.reason}"


def subscribe_detail(result: SubscribeResult) -> str:
    if result.reason_codes:
        return "SUBACK " + ",".join(f"0x{c:02X}" for c in result.reason_codes)
    return f"subscribe {result.reason}"


def classify_publish(result: PublishResult) -> tuple[Outcome, str] | None:
    """A refused or failed publish as evidence; None when it was accepted (what became of it needs a receiver)."""
    if result.ok:
        return None
    if result.reason == "refused":
        return Outcome.REFUSED_MQTT, publish_detail(result)
    if result.reason == "closed":
        return Outcome.CLOSED, "closed by the server after the PUBLISH"
    return Outcome.INCONCLUSIVE, publish_detail(result)


def classify_subscribe(result: SubscribeResult) -> tuple[Outcome, str] | None:
    """A refused or failed subscription as evidence; None when every filter was granted."""
    if result.ok:
        return None
    if result.reason_codes and any(c >= 0x80 for c in result.reason_codes):
        return Outcome.REFUSED_MQTT, subscribe_detail(result)
    if result.reason in ("closed", "connection-lost"):
        return Outcome.CLOSED, "closed by the server after the SUBSCRIBE"
    return Outcome.INCONCLUSIVE, subscribe_detail(result)


# HTTP statuses of a WebSocket upgrade that refuse the credential (AWS IoT: 403 ForbiddenException)
HTTP_REFUSALS = frozenset({401, 403})


def classify_token_connect(result: ConnectResult) -> tuple[Outcome, str]:
    """One custom-authorizer or SigV4 connection attempt (:func:`devices.tokens.try_connect`) as evidence."""
    if result.stage == "mqtt":
        if result.code == 0:
            return Outcome.ALLOWED, "CONNACK accepted"
        try:
            name = ReasonCode(result.code).name
        except ValueError:
            name = "UNKNOWN"
        return Outcome.REFUSED_MQTT, f"CONNACK {name} (0x{result.code:02X})"
    if result.stage == "http":
        message = _short(result.detail, 160)
        if result.code in HTTP_REFUSALS:
            return Outcome.REFUSED_HTTP, f"HTTP {result.code} on the WebSocket upgrade: {message}"
        return Outcome.INCONCLUSIVE, f"HTTP {result.code} on the WebSocket upgrade (not a refusal of the " \
                                     f"credential): {message}"
    if result.stage == "tls":
        return classify_tls_failure(result.detail)
    if result.stage == "closed":
        return Outcome.CLOSED, _short(f"closed by the server before any answer ({result.detail})")
    return Outcome.INCONCLUSIVE, _short(f"{result.stage}: {result.detail}")
