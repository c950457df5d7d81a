"""Static thing groups: named sets of things, the targets of ``iotgate job create --thing-group``.

As AWS IoT's static thing groups, without hierarchy or policies attached to a group. A job made for a group
targets the members it has when the job is created (AWS's SNAPSHOT target selection).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import sqlalchemy as sa

from gateway.registry.errors import AlreadyExists, InvalidValue, NotFound
from gateway.services.shadow_service import THING_NAME
from gateway.services.store import ServiceStore, thing_group_members, thing_groups

GROUP_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


class ThingGroups:
    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    @staticmethod
    def _check(name: str) -> None:
        if not GROUP_NAME.fullmatch(name):
            raise InvalidValue(f"thing group name {name!r}: use 1..128 of a-z A-Z 0-9 : _ -")

    def create(self, name: str, description: str | None = None) -> None:
        self._check(name)
        with self.store.write() as conn:
            if conn.execute(sa.select(thing_groups.c.name).where(thing_groups.c.name == name)).first():
                raise AlreadyExists(f"thing group {name} already exists")
            conn.execute(sa.insert(thing_groups).values(name=name, description=description,
                                                        created_at=datetime.now(timezone.utc)))

    def delete(self, name: str) -> None:
        with self.store.write() as conn:
            conn.execute(sa.delete(thing_group_members).where(thing_group_members.c.group_name == name))
            if not conn.execute(sa.delete(thing_groups).where(thing_groups.c.name == name)).rowcount:
                raise NotFound(f"thing group {name} does not exist")

    def add(self, name: str, things: list[str]) -> int:
        """Add things (already members are left as they are); how many were added."""
        for thing in things:
            if not THING_NAME.fullmatch(thing):
                raise InvalidValue(f"{thing!r} is not a thing name")
        with self.store.write() as conn:
            self._require(conn, name)
            present = set(conn.execute(sa.select(thing_group_members.c.thing).where(
                thing_group_members.c.group_name == name)).scalars())
            new = [t for t in dict.fromkeys(things) if t not in present]
            if new:
                conn.execute(sa.insert(thing_group_members), [dict(group_name=name, thing=t) for t in new])
        return len(new)

    def remove(self, name: str, things: list[str]) -> int:
        with self.store.write() as conn:
            self._require(conn, name)
            return conn.execute(sa.delete(thing_group_members).where(
                thing_group_members.c.group_name == name, thing_group_members.c.thing.in_(things))).rowcount

    def members(self, name: str) -> list[str]:
        with self.store.write() as conn:
            self._require(conn, name)
            return list(conn.execute(sa.select(thing_group_members.c.thing).where(
                thing_group_members.c.group_name == name).order_by(thing_group_members.c.thing)).scalars())

    def list(self) -> list[dict]:
        with self.store.write() as conn:
            count = sa.select(sa.func.count()).where(thing_group_members.c.group_name == thing_groups.c.name) \
                .scalar_subquery()
            rows = conn.execute(sa.select(thing_groups.c.name, thing_groups.c.description, count.label("things"))
                                .order_by(thing_groups.c.name)).all()
        return [{"thingGroupName": r.name, "description": r.description, "things": r.things} for r in rows]

    @staticmethod
    def _require(conn, name: str) -> None:
        if conn.execute(sa.select(thing_groups.c.name).where(thing_groups.c.name == name)).first() is None:
            raise NotFound(f"thing group {name} does not exist; create it with `iotgate thing-group create {name}`")
