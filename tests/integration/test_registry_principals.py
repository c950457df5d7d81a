"""Registry tables of authorizers and access keys, on SQLite and PostgreSQL; a version 1 registry gains them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from gateway.registry import AlreadyExists, Conflict, InvalidValue, LimitExceeded, NotFound, Registry, sqlite_url
from gateway.registry import schema as t

DOC = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}'
PEM = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
CONFIG = {"jwks_file": "/x/jwks.json", "issuer": "https://idp", "audience": ["iotgate"]}
AKID = "AKIAAAAAAAAAAAAAAAAA"
ASIA = "ASIAAAAAAAAAAAAAAAAA"


def test_authorizers_round_trip_and_reach_the_snapshot(registry):
    registry.create_policy("p", DOC)
    before = registry.change_counter()
    a = registry.create_authorizer("jwt-a", "jwt", config=CONFIG, token_key_name="token", signing_keys={"k": PEM},
                                   policies=["p"], default=True)
    assert registry.change_counter() == before + 1
    assert registry.get_authorizer("jwt-a") == a and a.policies == ("p",) and a.is_default
    registry.create_authorizer("cmd", "command", config={"command": ["auth"]}, signing_disabled=True, default=True)
    assert [x.name for x in registry.list_authorizers()] == ["cmd", "jwt-a"]
    assert not registry.get_authorizer("jwt-a").is_default  # one default at a time
    snap = registry.snapshot()
    assert snap.authorizers["jwt-a"].config == CONFIG and snap.authorizers["jwt-a"].signing_keys == {"k": PEM}
    assert registry.set_authorizer_status("jwt-a", "inactive").status == "INACTIVE"
    with pytest.raises(Conflict, match="granted to authorizer jwt-a"):
        registry.delete_policy("p")
    registry.delete_authorizer("jwt-a")
    registry.delete_policy("p")
    with pytest.raises(NotFound, match="authorizer 'jwt-a' does not exist"):
        registry.get_authorizer("jwt-a")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="bad name", kind="jwt", config={}, signing_disabled=True), InvalidValue, "authorizer name"),
    (dict(name="a", kind="lambda", config={}, signing_disabled=True), InvalidValue, "authorizer type"),
    (dict(name="a", kind="jwt", config={}), InvalidValue, "token signing is enabled"),
    (dict(name="a", kind="jwt", config={}, token_key_name="t", signing_keys={"k": "not pem"}), InvalidValue,
     "PEM public key"),
    (dict(name="a", kind="jwt", config={}, token_key_name="t",
          signing_keys={"a": PEM, "b": PEM, "c": PEM}), LimitExceeded, "at most 2"),
    (dict(name="a", kind="jwt", config={}, signing_disabled=True, policies=["missing"]), NotFound, "missing"),
    (dict(name="a", kind="jwt", config={}, signing_disabled=True, policies=[f"p{i}" for i in range(11)]),
     LimitExceeded, "at most 10"),
])
def test_authorizer_refusals(registry, kwargs, error, match):
    before = registry.change_counter()
    with pytest.raises(error, match=match):
        registry.create_authorizer(**kwargs)
    assert registry.change_counter() == before


def test_access_keys_store_only_sealed_secrets(registry):
    registry.create_policy("p", DOC)
    key = registry.create_access_key(AKID, "app", "v1:sealed", policies=["p"])
    assert key.status == "ACTIVE" and key.policies == ("p",) and "sealed" not in repr(key)
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    temp = registry.create_access_key(ASIA, "app", "v1:sealed2", session_token_sha256="a" * 64, expires_at=expires)
    assert registry.get_access_key(ASIA).expires_at == temp.expires_at
    assert [k.access_key_id for k in registry.list_access_keys("app")] == [AKID, ASIA]
    assert registry.snapshot().access_keys[AKID].sealed_secret == "v1:sealed"
    assert registry.set_access_key_status(AKID, "INACTIVE").status == "INACTIVE"
    with pytest.raises(AlreadyExists):
        registry.create_access_key(AKID, "app", "v1:x")
    with pytest.raises(InvalidValue, match="temporary"):
        registry.create_access_key("ASIABBBBBBBBBBBBBBBB", "app", "v1:x")
    with pytest.raises(InvalidValue, match="access key id"):
        registry.create_access_key("AKIA-short", "app", "v1:x")
    with pytest.raises(Conflict, match="access key AKIA"):
        registry.delete_policy("p")
    registry.delete_access_key(AKID)
    assert [k.access_key_id for k in registry.list_access_keys()] == [ASIA]


def test_a_version_1_registry_gains_the_new_tables(tmp_path):
    url = sqlite_url(tmp_path / "old.db")
    with Registry.open(url) as reg:
        reg.create_thing("kept")
        with reg._engine.begin() as conn:
            for name in ("access_key_policies", "access_keys", "authorizer_policies", "authorizers"):
                conn.exec_driver_sql(f"DROP TABLE {name}")
            conn.execute(sa.update(t.registry_state).values(schema_version=1))
    with Registry.open(url, create=False) as reg:
        assert reg.get_thing("kept").name == "kept"
        reg.create_authorizer("a", "command", config={"command": ["x"]}, signing_disabled=True)
        assert reg.list_authorizers()[0].name == "a"
        with reg._engine.connect() as conn:
            assert conn.execute(sa.select(t.registry_state.c.schema_version)).scalar() == t.SCHEMA_VERSION
