"""Errors of the MQTT codec.

Two kinds, never mixed up:

* :class:`MQTTProtocolError` -- the *peer* sent bytes that break MQTT 3.1.1 / 5.0. It carries
  the reason code to answer with (a v5 DISCONNECT or CONNACK reason, which maps to a v3 CONNACK
  return code where one exists) and the clause of the specification that was broken, e.g.
  ``[MQTT-3.1.2-3]``.
* :class:`MQTTLocalError` -- *our own* code asked to encode something that is not valid MQTT.
  That is a bug on this side, so it is also a :class:`ValueError`.
"""

from __future__ import annotations

from gateway.mqtt.reason_codes import ReasonCode

__all__ = ["MQTTError", "MQTTLocalError", "MQTTProtocolError"]


class MQTTError(Exception):
    """Base of every error raised by :mod:`gateway.mqtt`."""


class MQTTProtocolError(MQTTError):
    """The peer sent something that is not valid MQTT.

    ``reason_code`` is what the connection is refused or closed with: a CONNACK reason when the
    error is in a CONNECT, a DISCONNECT reason otherwise. ``clause`` names the broken rule: a
    normative statement such as ``[MQTT-3.3.1-4]`` of the protocol version in use, or a section
    (``§2.2.2.2``) where the specification states the rule without a statement number.
    ``protocol_level`` is 4 or 5 when known (always known after a CONNECT was read), else ``None``.
    """

    __slots__ = ("clause", "message", "protocol_level", "reason_code")

    def __init__(
        self,
        message: str,
        reason_code: ReasonCode = ReasonCode.MALFORMED_PACKET,
        clause: str | None = None,
        *,
        protocol_level: int | None = None,
    ) -> None:
        self.message = message
        self.reason_code = ReasonCode(reason_code)
        self.clause = clause
        self.protocol_level = protocol_level
        text = f"{message} {clause}" if clause else message
        super().__init__(text)

    def __repr__(self) -> str:
        return (
            f"MQTTProtocolError({self.message!r}, {self.reason_code.name}, {self.clause!r}, "
            f"protocol_level={self.protocol_level!r})"
        )


class MQTTLocalError(MQTTError, ValueError):
    """Our own code asked to encode a packet that is not valid MQTT (a bug on this side)."""
