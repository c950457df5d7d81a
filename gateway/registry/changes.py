"""The registry's change log: written by every mutation, read by gateways to update their snapshot in place.

A mutation records the entities it touched (kind, key) under its change counter, in its own transaction, so a
reader that sees the counter sees the rows. A reader holding counter N asks for the rows after N and re-reads
the current state of just those entities (one consistent transaction): a certificate (status, CA, attached
policies and things), a policy (its default version), a CA, a thing, or the principal tables (custom authorizers
and access keys, small: re-read whole). Every counter has at least one row (kind ``all`` when a mutation named
nothing), and pruning removes the oldest counters first: when the row of counter N+1 is gone, the log cannot
tell what changed and the reader reloads the whole snapshot.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import schema as t
from . import model as m

CERTIFICATE = "certificate"
POLICY = "policy"
CA_KIND = "ca"
THING = "thing"
PRINCIPALS = "principals"
ALL = "all"  # a mutation that named no entity: readers reload everything

RETAIN = 20_000  # change counters kept in the log (a gateway further behind reloads its snapshot)
PRUNE_EVERY = 500  # prune when the counter is a multiple of this
MAX_ENTITIES = 5_000  # more entities changed than this since a reader's counter: a full reload is cheaper
_CHUNK = 500


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeSet:
    """The current state of what changed in (since, counter]: None values are entities that no longer exist."""

    since: int
    counter: int
    certificates: dict[str, m.Certificate | None] = dataclasses.field(default_factory=dict)
    cert_policies: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    cert_things: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    policies: dict[str, m.Policy | None] = dataclasses.field(default_factory=dict)
    cas: dict[str, m.CA | None] = dataclasses.field(default_factory=dict)
    things: dict[str, m.Thing | None] = dataclasses.field(default_factory=dict)
    principals: tuple[dict[str, m.Authorizer], dict[str, m.AccessKey]] | None = None

    @property
    def empty(self) -> bool:
        return self.counter == self.since

    def __len__(self) -> int:
        return len(self.certificates) + len(self.policies) + len(self.cas) + len(self.things) + (
            1 if self.principals is not None else 0)


def log(conn: Connection, counter: int, changed: Iterable[tuple[str, str]]) -> None:
    """Write the change-log rows of the mutation at `counter` (inside its transaction) and prune old ones."""
    rows = [{"counter": counter, "kind": kind, "key": key} for kind, key in changed]
    if not rows:
        rows = [{"counter": counter, "kind": ALL, "key": ""}]
    conn.execute(sa.insert(t.registry_changes), rows)
    if counter % PRUNE_EVERY == 0 and counter > RETAIN:
        conn.execute(sa.delete(t.registry_changes).where(t.registry_changes.c.counter <= counter - RETAIN))


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def read(conn: Connection, since: int, max_entities: int,
         principals: Callable[[Connection], tuple[dict, dict]]) -> ChangeSet | None:
    """The ChangeSet after `since`, or None when the log does not cover it (see the module docstring)."""
    from .store import _POLICY_SELECT, _row_ca, _row_cert, _row_policy, _row_thing

    counter = conn.execute(
        sa.select(t.registry_state.c.change_counter).where(t.registry_state.c.id == 1)
    ).scalar_one()
    if counter == since:
        return ChangeSet(since, counter)
    if counter < since:  # another registry, or one restored from an older backup
        return None
    rc = t.registry_changes.c
    if conn.execute(sa.select(rc.id).where(rc.counter == since + 1).limit(1)).first() is None:
        return None
    wanted: dict[str, set[str]] = defaultdict(set)
    n = 0
    for kind, key in conn.execute(
        sa.select(rc.kind, rc.key).where(rc.counter > since, rc.counter <= counter).distinct()
    ):
        if kind == ALL:
            return None
        if key not in wanted[kind]:
            wanted[kind].add(key)
            n += 1
            if n > max_entities:
                return None
    cs = ChangeSet(since, counter)
    cert_ids = sorted(wanted.get(CERTIFICATE, ()))
    if cert_ids:
        cols = [c for c in t.certificates.c if c.name != "pem"]
        cp, tp = t.certificate_policies.c, t.thing_principals.c
        for cid in cert_ids:
            cs.certificates[cid] = None
        pols: dict[str, list[str]] = defaultdict(list)
        things: dict[str, list[str]] = defaultdict(list)
        for chunk in _chunks(cert_ids):
            for r in conn.execute(sa.select(*cols).where(t.certificates.c.certificate_id.in_(chunk))):
                cs.certificates[r.certificate_id] = _row_cert(r, pem=False)
            for cid, name in conn.execute(
                sa.select(cp.certificate_id, cp.policy_name).where(cp.certificate_id.in_(chunk))
                .order_by(cp.certificate_id, cp.policy_name)
            ):
                pols[cid].append(name)
            for cid, name in conn.execute(
                sa.select(tp.certificate_id, tp.thing_name).where(tp.certificate_id.in_(chunk))
                .order_by(tp.certificate_id, tp.thing_name)
            ):
                things[cid].append(name)
        for cid in cert_ids:
            cs.cert_policies[cid] = tuple(pols.get(cid, ()))
            cs.cert_things[cid] = tuple(things.get(cid, ()))
    names = sorted(wanted.get(POLICY, ()))
    for name in names:
        cs.policies[name] = None
    for chunk in _chunks(names):
        for r in conn.execute(_POLICY_SELECT.where(t.policies.c.name.in_(chunk))):
            cs.policies[r.name] = _row_policy(r)
    ids = sorted(wanted.get(CA_KIND, ()))
    for ca_id in ids:
        cs.cas[ca_id] = None
    for chunk in _chunks(ids):
        for r in conn.execute(sa.select(t.cas).where(t.cas.c.ca_id.in_(chunk))):
            cs.cas[r.ca_id] = _row_ca(r)
    names = sorted(wanted.get(THING, ()))
    for name in names:
        cs.things[name] = None
    for chunk in _chunks(names):
        for r in conn.execute(sa.select(t.things).where(t.things.c.name.in_(chunk))):
            cs.things[r.name] = _row_thing(r)
    if PRINCIPALS in wanted:
        return dataclasses.replace(cs, principals=principals(conn))
    return cs
