"""`iotgate shadow`: a thing's Device Shadows from the operator's side (as AWS's `iot-data` commands).

The gateway's Device Shadow service does the work, on the same stored shadows devices read and write; what
an update or delete publishes (``/update/accepted``, ``/update/delta``, ``/update/documents``,
``/delete/accepted``) waits in the registry's outbox until a running gateway publishes it to subscribers.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson

from certs.errors import IotgateError
from gateway.services.shadow_service import ShadowService, check_names
from gateway.services.store import ServiceStore
from iotgate.context import AppContext, emit_json, pass_app


class ShadowRefused(IotgateError):
    exit_code = 1


name_option = click.option("--name", "shadow_name", metavar="N", help="A named shadow (default: the classic one).")


def _service(app: AppContext, thing: str, shadow_name: str | None) -> ShadowService:
    try:
        check_names(thing, shadow_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return ShadowService(ServiceStore.of(app.registry()))


def _run(app: AppContext, thing: str, shadow_name: str | None, op: str, payload: bytes) -> dict:
    outcome = _service(app, thing, shadow_name).run(thing, shadow_name or "", op, payload, int(time.time()),
                                                    outbox=True)
    suffix, doc = outcome.messages[0]
    if suffix == "rejected":
        what = f"shadow {shadow_name!r} of {thing}" if shadow_name else f"the classic shadow of {thing}"
        raise ShadowRefused(f"{op} of {what} refused: {doc['code']} {doc['message']}")
    return doc


@click.group()
def shadow() -> None:
    """Device Shadows (classic and named): get, update, delete, list."""


@shadow.command("get")
@click.argument("thing")
@name_option
@pass_app
def get(app: AppContext, thing: str, shadow_name: str | None) -> None:
    """Print a shadow document: state (desired, reported, delta), metadata, version."""
    emit_json(_run(app, thing, shadow_name, "get", b""))


@shadow.command("update")
@click.argument("thing")
@name_option
@click.option("--payload", "payload", metavar="JSON|@FILE", required=True,
              help='The request document, e.g. \'{"state": {"desired": {"color": "red"}}}\', or @file.json.')
@pass_app
def update(app: AppContext, thing: str, shadow_name: str | None, payload: str) -> None:
    """Update a shadow as a device's `.../shadow/update` would (version, clientToken as AWS)."""
    if payload.startswith("@"):
        path = Path(payload[1:])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--payload") from None
    else:
        data = payload.encode()
    emit_json(_run(app, thing, shadow_name, "update", data))


@shadow.command("delete")
@click.argument("thing")
@name_option
@click.option("--version", type=click.IntRange(min=0), help="Delete only if the shadow has this version.")
@pass_app
def delete(app: AppContext, thing: str, shadow_name: str | None, version: int | None) -> None:
    """Delete a shadow (a new one carries on from its version)."""
    payload = orjson.dumps({"version": version}) if version is not None else b""
    emit_json(_run(app, thing, shadow_name, "delete", payload))


@shadow.command("list")
@click.argument("thing")
@pass_app
def list_(app: AppContext, thing: str) -> None:
    """The shadows of a thing: name ("" for the classic shadow) and version."""
    rows = _service(app, thing, None).store.list_shadows(thing)
    emit_json([{"name": name or None, "version": version} for name, version in rows])
