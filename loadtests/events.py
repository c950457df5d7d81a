"""What a device saw, as Locust request events: one row per stage, failures named by what the device saw.

Rows (request type, name):

    TCP  tcp_connect      connect() -> socket writable
    TLS  tls_handshake    ClientHello -> handshake complete (mutual: the device's own certificate)
    MQTT connack          CONNECT written -> CONNACK read
    MQTT suback           SUBSCRIBE written -> SUBACK read
    MQTT puback           QoS 1 PUBLISH written -> PUBACK read
    MQTT e2e              PUBLISH written -> delivered to the subscriber, through the broker
    MQTT connection       only failures: an accepted connection that the target ended
    DEVICE identity       only failures: the device's own files, or no identity left for the user
    ATTACK <kind>         an attack: refused = success (time to the refusal), accepted or inconclusive = failure

Failures carry an exception whose type says what happened and whose text gives the detail, e.g.
``ConnackRefused('NOT_AUTHORIZED (0x87)')``, ``TLSRefused('TLSV13_ALERT_CERTIFICATE_REQUIRED: ...')``,
``Unreachable('ECONNREFUSED: 127.0.0.1:9: Connection refused')`` -- Locust's failure table groups by that text.
A target that cannot be reached is ``Unreachable`` or ``Timeout``, never a refusal.

:func:`connect_rows` is pure: a :class:`~devices.client.ConnectOutcome` in, rows out.
"""

from __future__ import annotations

from typing import NamedTuple

from devices.client import ConnectOutcome, PublishResult, Reason, SubscribeResult

__all__ = [
    "AckRefused",
    "AttackAccepted",
    "AttackInconclusive",
    "ClosedBeforeConnack",
    "ConnackRefused",
    "ConnectionLost",
    "DeviceFailure",
    "IdentityProblem",
    "NoAck",
    "NotDelivered",
    "ProtocolError",
    "Row",
    "TLSRefused",
    "Timeout",
    "Unreachable",
    "ack_codes",
    "ack_row",
    "connect_rows",
]


class DeviceFailure(Exception):
    """Base of everything a device user reports as a failed request."""


class Unreachable(DeviceFailure):
    """No TCP connection (refused, unreachable, DNS): the target did not answer; never a refusal."""


class Timeout(DeviceFailure):
    """A stage did not complete in time."""


class TLSRefused(DeviceFailure):
    """A TLS alert or a failed handshake (also an alert after it, before CONNACK)."""


class ConnackRefused(DeviceFailure):
    """CONNACK with a failure code."""


class ClosedBeforeConnack(DeviceFailure):
    """The target closed the connection after the handshake without a CONNACK."""


class ProtocolError(DeviceFailure):
    """The target sent something that is not valid MQTT."""


class IdentityProblem(DeviceFailure):
    """The device's own identity: missing or unusable files, or none left for this user."""


class AckRefused(DeviceFailure):
    """PUBACK or SUBACK with a failure code."""


class NoAck(DeviceFailure):
    """No PUBACK/SUBACK: timed out, or the connection was lost first."""


class ConnectionLost(DeviceFailure):
    """An accepted connection ended without the device asking."""


class NotDelivered(DeviceFailure):
    """A probe was acknowledged but never reached its subscriber in time."""


class AttackAccepted(DeviceFailure):
    """An attack that had to be refused got in."""


class AttackInconclusive(DeviceFailure):
    """An attack produced no evidence (target unreachable, throttled, no answer)."""


class Row(NamedTuple):
    request_type: str
    name: str
    ms: float
    exception: DeviceFailure | None = None


_TIMEOUT_ROW = {"dns": ("TCP", "tcp_connect"), "tcp": ("TCP", "tcp_connect"), "tls": ("TLS", "tls_handshake"),
                "mqtt": ("MQTT", "connack")}


def connect_rows(outcome: ConnectOutcome) -> list[Row]:
    """A success row for each stage the attempt completed, then (if it failed) one failure row for the stage
    where it ended, timed from the end of the last completed stage."""
    t = outcome.timings
    rows: list[Row] = []
    done = t.dns or 0.0
    if t.tcp is not None:
        rows.append(Row("TCP", "tcp_connect", t.tcp * 1e3))
        done += t.tcp
    if t.tls is not None:
        rows.append(Row("TLS", "tls_handshake", t.tls * 1e3))
        done += t.tls
    if outcome.ok:
        rows.append(Row("MQTT", "connack", (t.connack or 0.0) * 1e3))
        return rows
    spent = max(0.0, t.total - done) * 1e3
    reason, detail = outcome.reason, outcome.detail
    if reason is Reason.IDENTITY:
        rows.append(Row("DEVICE", "identity", spent, IdentityProblem(detail)))
    elif reason in (Reason.DNS, Reason.TCP):
        rows.append(Row("TCP", "tcp_connect", spent, Unreachable(detail)))
    elif reason is Reason.TIMEOUT:
        request_type, name = _TIMEOUT_ROW.get(outcome.stage, ("MQTT", "connack"))
        rows.append(Row(request_type, name, spent, Timeout(detail)))
    elif reason is Reason.TLS:
        during = t.tls is None
        rows.append(Row("TLS" if during else "MQTT", "tls_handshake" if during else "connack", spent,
                        TLSRefused(detail if during else f"after the handshake, before CONNACK: {detail}")))
    elif reason is Reason.REFUSED:
        rows.append(Row("MQTT", "connack", (t.connack if t.connack is not None else spent / 1e3) * 1e3,
                        ConnackRefused(detail)))
    elif reason is Reason.CLOSED:
        rows.append(Row("MQTT", "connack", spent, ClosedBeforeConnack(detail)))
    else:
        rows.append(Row("MQTT", "connack", spent, ProtocolError(detail)))
    return rows


def ack_row(name: str, result: PublishResult | SubscribeResult) -> Row:
    """The row of a PUBACK or SUBACK."""
    ms = (result.latency or 0.0) * 1e3
    if result.ok:
        return Row("MQTT", name, ms)
    if result.reason == "refused":
        return Row("MQTT", name, ms, AckRefused(f"{name.upper()} {ack_codes(result)}"))
    return Row("MQTT", name, ms, NoAck(result.reason))


def ack_codes(result: PublishResult | SubscribeResult) -> str:
    """The reason code(s) of a PUBACK or SUBACK as hex: ``0x87`` or ``0x01, 0x80``."""
    if isinstance(result, PublishResult):
        return f"0x{result.reason_code:02X}" if result.reason_code is not None else "(no code)"
    return ", ".join(f"0x{c:02X}" for c in result.reason_codes) or "(no code)"
