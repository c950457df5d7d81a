"""The native connector: :class:`devices.client.DeviceClient`, which is already a :class:`DeviceLink`."""

from __future__ import annotations

from collections.abc import Callable

from devices.client import ClientOptions, DeviceClient, DisconnectNotice, Endpoint
from devices.identity import DeviceIdentity
from devices.token_devices import CredentialTLS, TokenIdentity, WebSocketTransport


class NativeConnector:
    name = "native"

    def __init__(self, *, transport: str = "membio", keep_context: bool | None = None) -> None:
        self.transport = transport
        self.keep_context = keep_context

    def link(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
             on_disconnect: Callable[[DisconnectNotice], None] | None = None) -> DeviceClient:
        if isinstance(identity, TokenIdentity):   # no certificate: the gateway's token listener
            endpoint = identity.endpoint(endpoint)
            tls = CredentialTLS(identity, alpn=endpoint.alpn)
            if identity.auth == "token":   # the client puts a fresh token in each CONNECT
                return DeviceClient(identity, endpoint, client_id=client_id, options=options, transport="stdlib",
                                    on_disconnect=on_disconnect, tls=tls)
            return DeviceClient(identity, endpoint, client_id=client_id, options=options,
                                transport=WebSocketTransport(), on_disconnect=on_disconnect, tls=tls)
        return DeviceClient(identity, endpoint, client_id=client_id, options=options, transport=self.transport,
                            keep_context=self.keep_context, on_disconnect=on_disconnect)
