"""What the endpoint observed, as plain values: the pure judges in :mod:`gateway.qualify.judge` read these."""

from __future__ import annotations

import dataclasses
import enum

from gateway.qualify.clienthello import ClientHello

__all__ = ["Handshake", "HandshakeOutcome", "alert_name"]


class HandshakeOutcome(enum.StrEnum):
    COMPLETED = "completed"            # the device finished the handshake (and its certificate was verified)
    DEVICE_ALERT = "device-alert"      # the device sent a TLS alert and stopped
    DEVICE_CLOSED = "device-closed"    # the device closed the connection without an alert
    SERVER_REFUSED = "server-refused"  # the endpoint refused the device (certificate, version, no common cipher)
    NOT_TLS = "not-tls"                # the device sent bytes that are not a TLS ClientHello
    NO_HELLO = "no-hello"              # the device connected and closed before any ClientHello
    TIMEOUT = "timeout"                # the handshake did not finish within the deadline


_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


def alert_name(openssl_reason: str | None) -> str | None:
    """``TLSV1_ALERT_UNKNOWN_CA`` -> ``unknown_ca`` (RFC 8446 names); None when the reason is not a received alert."""
    if not openssl_reason:
        return None
    for prefix in _ALERT_PREFIXES:
        if openssl_reason.startswith(prefix):
            return openssl_reason[len(prefix):].lower()
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    """One TLS handshake as the endpoint saw it.

    ``server_flight`` is True once the endpoint had sent its answer to the ClientHello (ServerHello and, in every
    profile, its certificate): only a refusal after that point says anything about how the device judges the
    server's certificate.
    """

    outcome: HandshakeOutcome
    detail: str = ""
    hello: ClientHello | None = None
    server_flight: bool = False
    alert: str | None = None            # the device's alert (RFC name) when outcome is DEVICE_ALERT
    reason: str | None = None           # OpenSSL's reason for SERVER_REFUSED
    version: str | None = None
    cipher: str | None = None
    peer_der: bytes | None = None       # the device's certificate (COMPLETED)
    seconds: float = 0.0

    @property
    def completed(self) -> bool:
        return self.outcome is HandshakeOutcome.COMPLETED
