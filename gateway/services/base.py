"""The dispatch interface of the gateway's services (see the package docstring for how to add one)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from gateway.mqtt import topic_matches


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who published the request: the session's principal as the policy engine saw it."""

    client_id: str
    principal_id: str | None  # AWS's principalIdentifier: the certificate id, or "authorizer:NAME" / "key:AKID"
    thing: str | None  # the thing attached to the principal whose name is the client id (else None)
    source_ip: str = ""
    connection: int | None = None  # the requesting connection, for answers to it alone (Message.to)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    caller: Caller
    topic: str
    payload: bytes
    now: float  # epoch seconds


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A publish the gateway makes: delivered to every subscriber the policy engine allows (iot:Receive), or with
    ``to`` (a Caller.connection) to that connection alone, still decided by iot:Receive there."""

    topic: str
    payload: bytes
    to: int | None = None


class Service(Protocol):
    """A `$aws/...` service. ``filters``: the MQTT topic filters of the request topics it answers.

    ``handle`` runs on the services' worker thread (one at a time, in the order requests arrived), may use the
    registry database, and returns the messages to publish. Bad input is answered (``.../rejected``), never
    raised; an exception is an internal error: logged, no reply.
    """

    name: str
    filters: Sequence[str]

    def handle(self, request: Request) -> list[Message]: ...

    # Optional: ``throttled(request) -> list[Message]``, the answer (on the loop, without I/O) to a request
    # refused because its connection has too many unanswered (AWS: 429 for the Device Shadow service).


class Dispatcher:
    """Which service answers a topic. Pure: ``serves`` is what a session asks before it checks the policy."""

    def __init__(self, services: Iterable[Service] = ()) -> None:
        self.services: list[Service] = []
        for service in services:
            self.register(service)

    def register(self, service: Service) -> None:
        for flt in service.filters:
            if not flt.startswith("$aws/"):
                raise ValueError(f"service {service.name}: {flt!r} is not a $aws/ topic filter")
        self.services.append(service)

    def route(self, topic: str) -> Service | None:
        for service in self.services:
            for flt in service.filters:
                if topic_matches(flt, topic):
                    return service
        return None

    def serves(self, topic: str) -> bool:
        return self.route(topic) is not None
