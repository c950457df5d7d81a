"""The Device Shadow service: topics parsed, the pure core (``gateway.services.shadow``) run on the stored
shadow in one transaction, replies made into messages. Also the operator's side (``iotgate shadow``): the
same operations, their messages left in the outbox for a gateway to publish."""

from __future__ import annotations

import re

import orjson

from gateway.services import shadow as core
from gateway.services.base import Message, Request
from gateway.services.store import ServiceStore

THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
SHADOW_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,64}")
OPERATIONS = ("get", "update", "delete")


def shadow_prefix(thing: str, name: str | None) -> str:
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{name}" if name else base


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(thing, shadow name or "", operation) of a request topic; None if it is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow":
        thing, name, op = parts[2], "", parts[4]
    elif len(parts) == 7 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow" and parts[4] == "name":
        thing, name, op = parts[2], parts[5], parts[6]
    else:
        return None
    if op not in OPERATIONS or not THING_NAME.fullmatch(thing) or (name and not SHADOW_NAME.fullmatch(name)):
        return None
    return thing, name, op


def check_names(thing: str, name: str | None) -> None:
    if not THING_NAME.fullmatch(thing):
        raise ValueError(f"thing name {thing!r}: use 1..128 of a-z A-Z 0-9 : _ -")
    if name and not SHADOW_NAME.fullmatch(name):
        raise ValueError(f"shadow name {name!r}: use 1..64 of a-z A-Z 0-9 : _ -")


class ShadowService:
    name = "shadow"
    filters = ("$aws/things/+/shadow/get", "$aws/things/+/shadow/update", "$aws/things/+/shadow/delete",
               "$aws/things/+/shadow/name/+/get", "$aws/things/+/shadow/name/+/update",
               "$aws/things/+/shadow/name/+/delete")

    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    def handle(self, request: Request) -> list[Message]:
        parsed = parse_topic(request.topic)
        if parsed is None:
            return []  # a name AWS would not accept: there is no reply topic to answer on
        thing, name, op = parsed
        outcome = self.run(thing, name, op, request.payload, int(request.now))
        return messages(shadow_prefix(thing, name), op, outcome)

    def throttled(self, request: Request) -> list[Message]:
        parsed = parse_topic(request.topic)
        if parsed is None:
            return []
        thing, name, op = parsed
        token = _token(request.payload)
        error = core.ShadowError("throttled", client_token=token)
        return messages(shadow_prefix(thing, name), op, core.Outcome(None, (("rejected", core.rejected(
            error, int(request.now))),)))

    def run(self, thing: str, name: str, op: str, payload: bytes, now: int, *, outbox: bool = False):
        """One operation in one transaction; ``outbox``: its messages are left for a gateway to publish."""
        with self.store.write() as conn:
            current = self.store.load_shadow(conn, thing, name)
            if op == "update":
                outcome = core.update(current, payload, now)
            elif op == "get":
                outcome = core.get(current, payload, now, name or thing)
            else:
                outcome = core.delete(current, payload, now, name or thing)
            if outcome.shadow is not None:
                self.store.save_shadow(conn, thing, name, outcome.shadow)
            if outbox and op != "get":
                # As AWS's REST API: subscribers see accepted changes; a refusal is the caller's answer only.
                self.store.enqueue(conn, [m for m in messages(shadow_prefix(thing, name), op, outcome)
                                          if not m.topic.endswith("/rejected")])
        return outcome


def messages(prefix: str, op: str, outcome: core.Outcome) -> list[Message]:
    out = []
    for suffix, doc in outcome.messages:
        if suffix in ("accepted", "rejected"):
            topic = f"{prefix}/{op}/{suffix}"
        else:
            topic = f"{prefix}/update/{suffix}"
        out.append(Message(topic, orjson.dumps(doc)))
    return out


def _token(payload: bytes) -> str | None:
    try:
        token = orjson.loads(payload).get("clientToken")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return token if isinstance(token, str) and len(token.encode()) <= core.MAX_CLIENT_TOKEN_BYTES else None
