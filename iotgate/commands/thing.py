"""`iotgate thing`: the registry's things."""

from __future__ import annotations

import click

from gateway.registry import Thing
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when


@click.group()
def thing() -> None:
    """Things: create, list, show."""


def thing_json(t: Thing) -> dict:
    return {"thingName": t.name, "thingTypeName": t.thing_type, "attributes": t.attributes,
            "createdAt": when(t.created_at)}


def _attributes(values: tuple[str, ...]) -> dict[str, str]:
    attributes = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--attr")
        attributes[key] = val
    return attributes


@thing.command("create")
@click.argument("name")
@click.option("--type", "thing_type", help="Thing type name.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="Attribute (repeatable).")
@pass_app
def create(app: AppContext, name: str, thing_type: str | None, attrs: tuple[str, ...]) -> None:
    """Create a thing."""
    t = app.registry().create_thing(name, thing_type, _attributes(attrs))
    console.print(f"thing {t.name} created")


@thing.command("list")
@click.option("--prefix", help="Only things whose name starts with this.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def list_(app: AppContext, prefix: str | None, limit: int | None, as_json: bool) -> None:
    """List things."""
    registry = app.registry()
    rows = registry.list_things(prefix=prefix, limit=limit)
    if as_json:
        emit_json([thing_json(t) for t in rows])
        return
    total = registry.count_things()
    emit_table(f"{len(rows)} of {total} thing(s)", ["thing", "type", "attributes", "created"],
               ((t.name, t.thing_type, ",".join(f"{k}={v}" for k, v in t.attributes.items()), when(t.created_at))
                for t in rows))


@thing.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show a thing with its certificates and their policies."""
    registry = app.registry()
    t = registry.get_thing(name)
    certs = registry.list_thing_principals(name)
    data = thing_json(t)
    data["certificates"] = [
        {"certificateId": c.certificate_id, "status": c.status, "notAfter": when(c.not_after),
         "policies": [p.name for p in registry.list_attached_policies(c.certificate_id)]}
        for c in certs
    ]
    if as_json:
        emit_json(data)
        return
    console.print(f"thing       {t.name}\ntype        {t.thing_type or '-'}\nattributes  {t.attributes or '-'}")
    for c in data["certificates"]:
        console.print(f"certificate {c['certificateId']} {c['status']} until {c['notAfter']} "
                      f"policies: {', '.join(c['policies']) or '-'}")
