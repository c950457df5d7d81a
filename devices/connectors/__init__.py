"""Connectors: the same scenario through different MQTT client stacks.

A connector makes, for one device identity, a :class:`DeviceLink`: connect, publish, subscribe, receive,
disconnect, abort. Every link reports in the native client's result types (``ConnectOutcome``,
``PublishResult``, ``SubscribeResult``, ``DisconnectNotice``) so scenarios, expectations and reports do not
care which stack ran them:

    native     devices.client.DeviceClient on the project's own codec (default; for scale)
    paho       paho-mqtt 2 (reference client: interoperability)
    aiomqtt    aiomqtt 2 (reference asyncio client: interoperability)
    awsiotsdk  the AWS IoT Device SDK v2 on aws-crt (what runs against AWS IoT Core)

Connectors are looked up by name with :func:`get_connector`; each lives in its own module and imports
its library only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from devices.client import (ClientOptions, ConnectOutcome, DisconnectNotice, Endpoint, PublishResult,
                            SubscribeResult)
from devices.identity import DeviceIdentity
from gateway.mqtt import Publish


@runtime_checkable
class DeviceLink(Protocol):
    """One simulated device's connection, whatever client stack is underneath."""

    @property
    def client_id(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> ConnectOutcome: ...

    async def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, *,
                      timeout: float | None = None) -> PublishResult: ...

    async def subscribe(self, *filters: str, qos: int = 1, timeout: float | None = None) -> SubscribeResult: ...

    def messages(self) -> AsyncIterator[Publish]: ...

    async def disconnect(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection abruptly (no DISCONNECT): what chaos and a crash look like to the server."""


class Connector(Protocol):
    name: str

    def link(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
             on_disconnect: Callable[[DisconnectNotice], None] | None = None) -> DeviceLink: ...


CONNECTORS = {
    "native": "devices.connectors.native:NativeConnector",
    "paho": "devices.connectors.paho:PahoConnector",
    "aiomqtt": "devices.connectors.aiomqtt:AiomqttConnector",
    "awsiotsdk": "devices.connectors.awsiotsdk:AwsIotSdkConnector",
}


class UnknownConnector(ValueError):
    pass


def get_connector(name: str, **settings) -> Connector:
    """The connector called ``name`` (``native``, ``paho``, ``aiomqtt``, ``awsiotsdk``)."""
    try:
        module_name, cls_name = CONNECTORS[name].split(":")
    except KeyError:
        raise UnknownConnector(f"unknown connector {name!r}; choose one of {', '.join(CONNECTORS)}") from None
    return getattr(importlib.import_module(module_name), cls_name)(**settings)
