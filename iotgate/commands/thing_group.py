"""`iotgate thing-group`: static thing groups, the targets of `iotgate job create --thing-group`."""

from __future__ import annotations

import click

from gateway.services.groups import ThingGroups
from gateway.services.store import ServiceStore
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app


def _groups(app: AppContext) -> ThingGroups:
    return ThingGroups(ServiceStore.of(app.registry()))


@click.group("thing-group")
def thing_group() -> None:
    """Static thing groups: create, add, remove, show, list, delete."""


@thing_group.command("create")
@click.argument("name")
@click.option("--description", help="What the group is for.")
@pass_app
def create(app: AppContext, name: str, description: str | None) -> None:
    """Create a thing group."""
    _groups(app).create(name, description)
    console.print(f"thing group {name} created")


@thing_group.command("add")
@click.argument("name")
@click.argument("things", nargs=-1, required=True)
@click.option("--unregistered-ok", is_flag=True, help="Accept names that are not things in the registry.")
@pass_app
def add(app: AppContext, name: str, things: tuple[str, ...], unregistered_ok: bool) -> None:
    """Add things to a group."""
    if not unregistered_ok:
        missing = sorted(set(things) - app.registry().existing_things(things))
        if missing:
            raise click.BadParameter(f"not things in the registry: {', '.join(missing[:5])} (create them, or pass "
                                     "--unregistered-ok)", param_hint="THINGS")
    added = _groups(app).add(name, list(things))
    console.print(f"{added} thing(s) added to {name}")


@thing_group.command("remove")
@click.argument("name")
@click.argument("things", nargs=-1, required=True)
@pass_app
def remove(app: AppContext, name: str, things: tuple[str, ...]) -> None:
    """Remove things from a group."""
    console.print(f"{_groups(app).remove(name, list(things))} thing(s) removed from {name}")


@thing_group.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """The things of a group."""
    members = _groups(app).members(name)
    if as_json:
        emit_json({"thingGroupName": name, "things": members})
        return
    console.print(f"thing group {name}: {len(members)} thing(s)")
    for thing in members:
        console.print(f"  {thing}")


@thing_group.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List thing groups."""
    rows = _groups(app).list()
    if as_json:
        emit_json(rows)
        return
    emit_table(f"{len(rows)} thing group(s)", ["group", "things", "description"],
               ((r["thingGroupName"], r["things"], r["description"]) for r in rows))


@thing_group.command("delete")
@click.argument("name")
@pass_app
def delete(app: AppContext, name: str) -> None:
    """Delete a thing group (its things stay)."""
    _groups(app).delete(name)
    console.print(f"thing group {name} deleted")
