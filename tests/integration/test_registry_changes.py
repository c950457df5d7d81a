"""The registry's change log on SQLite and PostgreSQL: what each mutation records, what a reader gets back, when
it must reload everything, and that a view updated from the log equals a view rebuilt from a full snapshot."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from gateway.auth import AuthView
from gateway.registry import AlreadyExists, InvalidTransition, LimitExceeded, ProvisionItem, Registry
from gateway.registry import changes as ch
from gateway.registry import schema as t

from .test_registry import DOC, NA, NB, add_ca, add_cert, caid, cid

DOC2 = DOC.replace("iot:Connect", "iot:Publish")


def fleet(reg: Registry, n: int = 4) -> None:
    add_ca(reg)
    reg.create_policy("p", DOC)
    reg.create_policy("q", DOC2)
    for i in range(n):
        add_cert(reg, i)
        reg.create_thing(f"t{i}", attributes={"room": str(i)})
        reg.attach_thing_principal(f"t{i}", cid(i))
        reg.attach_policy("p", cid(i))


def test_each_mutation_reads_back_as_the_entities_it_touched(registry):
    fleet(registry)
    c = registry.change_counter()
    registry.set_certificate_status(cid(0), "REVOKED")
    cs = registry.changes_since(c)
    assert (cs.since, cs.counter) == (c, c + 1)
    assert set(cs.certificates) == {cid(0)} and cs.certificates[cid(0)].status == "REVOKED"
    assert cs.certificates[cid(0)].pem == ""  # the gateway never needs the stored PEM
    assert cs.cert_policies[cid(0)] == ("p",) and cs.cert_things[cid(0)] == ("t0",)
    assert not cs.policies and not cs.cas and not cs.things and cs.principals is None

    c = registry.change_counter()
    registry.detach_policy("p", cid(1))
    registry.attach_policy("q", cid(1))
    cs = registry.changes_since(c)
    assert set(cs.certificates) == {cid(1)} and cs.cert_policies[cid(1)] == ("q",)

    c = registry.change_counter()
    registry.create_policy_version("p", DOC2, set_as_default=True)
    cs = registry.changes_since(c)
    assert set(cs.policies) == {"p"} and cs.policies["p"].default_version_id == 2 and not cs.certificates

    c = registry.change_counter()
    registry.set_ca_status(caid(0), "INACTIVE")
    registry.update_thing("t2", attributes={"room": "x"})
    cs = registry.changes_since(c)
    assert cs.cas[caid(0)].status == "INACTIVE" and cs.things["t2"].attributes == {"room": "x"}

    c = registry.change_counter()
    registry.detach_thing_principal("t3", cid(3))
    registry.delete_thing("t3")
    cs = registry.changes_since(c)
    assert cs.cert_things[cid(3)] == () and cs.things == {"t3": None}

    c = registry.change_counter()
    registry.create_authorizer("auth", "jwt", signing_disabled=True, config={"issuer": "https://issuer.example",
                                                                              "audience": "iot"})
    cs = registry.changes_since(c)
    assert cs.principals is not None and "auth" in cs.principals[0]


def test_nothing_new_is_an_empty_change_set(registry):
    fleet(registry, 1)
    c = registry.change_counter()
    cs = registry.changes_since(c)
    assert cs.empty and len(cs) == 0
    registry.set_certificate_status(cid(0), "REVOKED")
    registry.set_certificate_status(cid(0), "REVOKED")  # no change: no counter, no log row
    assert registry.change_counter() == c + 1


def test_a_pruned_log_or_a_mutation_naming_nothing_means_reload(registry, monkeypatch):
    fleet(registry, 1)
    c = registry.change_counter()
    with registry._write():  # a mutation that names no entity (as a future writer that forgets to) ...
        pass
    assert registry.changes_since(c) is None  # ... makes every reader behind it reload
    c = registry.change_counter()
    monkeypatch.setattr(ch, "RETAIN", 1)
    monkeypatch.setattr(ch, "PRUNE_EVERY", 1)
    registry.set_certificate_status(cid(0), "INACTIVE")
    registry.set_certificate_status(cid(0), "ACTIVE")
    assert registry.changes_since(c) is None  # the rows after c were pruned
    assert registry.changes_since(registry.change_counter() - 1) is not None


def test_too_many_entities_means_reload(registry):
    add_ca(registry)
    registry.create_policy("p", DOC)
    c = registry.change_counter()
    registry.provision_batch([
        ProvisionItem(f"b{i}", cid(f"b{i}"), "PEM", "01", f"b{i}", caid(0), NB, NA, ("p",)) for i in range(20)])
    cs = registry.changes_since(c)
    assert len(cs.certificates) == 20 and len(cs.things) == 20
    assert registry.changes_since(c, max_entities=10) is None


def test_an_older_registry_is_upgraded_and_readers_reload_once(registry_url):
    with Registry.open(registry_url) as reg:
        fleet(reg, 1)
        with reg._engine.begin() as conn:
            t.registry_changes.drop(conn)
            conn.execute(sa.update(t.registry_state).values(schema_version=2))
    with Registry.open(registry_url) as reg:
        c = reg.change_counter()
        assert reg.changes_since(c - 1) is None  # that change was made before the log existed
        reg.set_certificate_status(cid(0), "REVOKED")
        assert set(reg.changes_since(c).certificates) == {cid(0)}


def _fingerprint(view: AuthView) -> tuple:
    certs = sorted(view.certificates)
    return (view.ca_pems, view.cas, {k: view.state(k) for k in certs}, sorted(view.policies),
            sorted(view.policy_errors), {k: v for k, v in view.things.items()},
            sorted(view.authorizers), view.default_authorizer)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_view_updated_from_the_log_equals_a_view_from_a_full_snapshot(registry, seed):
    rnd = random.Random(seed)
    fleet(registry, 6)
    add_ca(registry, 1)
    view = AuthView(registry.snapshot(certificate_pem=False))
    for k in range(len(view.certificates)):  # cache every state, as live sessions do
        view.state(sorted(view.certificates)[k])
    steps = [
        lambda i: registry.set_certificate_status(cid(i), rnd.choice(["INACTIVE", "ACTIVE"])),
        lambda i: registry.set_certificate_status(cid(i), "REVOKED"),
        lambda i: registry.attach_policy("q", cid(i)),
        lambda i: registry.create_policy_version(rnd.choice("pq"), rnd.choice([DOC, DOC2, "{not json"]),
                                                 set_as_default=True),
        lambda i: registry.set_ca_status(caid(rnd.randrange(2)), rnd.choice(["INACTIVE", "ACTIVE"])),
        lambda i: registry.update_thing(f"t{i}", attributes={"room": str(rnd.randrange(9))}),
        lambda i: add_cert(registry, f"new{rnd.randrange(10**9)}", ca=1),
    ]
    for _ in range(12):
        batch = rnd.randrange(1, 4)
        for _ in range(batch):
            try:
                rnd.choice(steps)(rnd.randrange(6))
            except (InvalidTransition, LimitExceeded, AlreadyExists):  # refusals are part of the mix
                pass
        cs = registry.changes_since(view.counter)
        assert cs is not None
        view, _ = view.updated(cs)
        full = AuthView(registry.snapshot(certificate_pem=False))
        assert view.counter == full.counter
        assert _fingerprint(view) == _fingerprint(full)


def test_updated_reports_the_evaluated_certificates_a_change_touches(registry):
    fleet(registry, 3)
    view = AuthView(registry.snapshot(certificate_pem=False))
    for i in range(3):
        view.state(cid(i))
    c = registry.change_counter()
    registry.set_certificate_status(cid(1), "REVOKED")
    new, affected = view.updated(registry.changes_since(c))
    assert affected == [cid(1)] and new.state(cid(1)).status == "REVOKED" and view.state(cid(1)).status == "ACTIVE"
    c = new.counter
    registry.create_policy_version("p", DOC2, set_as_default=True)
    _, affected = new.updated(registry.changes_since(c))
    assert sorted(affected) == sorted(cid(i) for i in range(3))
