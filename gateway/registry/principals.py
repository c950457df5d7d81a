"""Registry tables of the principals that are not certificates: custom authorizers and SigV4 access keys.

Mixed into `Registry` (same transactions, same change counter): a change here reaches the gateway's live
sessions as a certificate change does. The registry stores what it is given after checking its form; the
kind-specific settings of an authorizer are checked by `gateway.auth.authorizers` before they get here, and an
access key's secret arrives already sealed (`gateway.auth.secrets`): this module never sees a plaintext secret.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import changes as ch
from . import model as m
from . import schema as t
from .errors import AlreadyExists, InvalidValue, LimitExceeded, NotFound
from .model import AccessKey, Authorizer


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _row_authorizer(r, policies: tuple[str, ...]) -> Authorizer:
    return Authorizer(r.name, r.kind, r.status, bool(r.signing_disabled), r.token_key_name, json.loads(r.signing_keys),
                      json.loads(r.config), bool(r.is_default), r.created_at, r.updated_at, policies)


def _row_key(r, policies: tuple[str, ...]) -> AccessKey:
    return AccessKey(r.access_key_id, r.identity, r.status, r.sealed_secret, r.session_token_sha256, r.expires_at,
                     r.created_at, policies)


def _policy_names(values: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.policy_name(v) for v in values))
    if len(names) > m.MAX_POLICIES_PER_PRINCIPAL:
        raise LimitExceeded(f"{len(names)} policies given; a principal has at most {m.MAX_POLICIES_PER_PRINCIPAL}")
    return names


def _signing_keys(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidValue("token signing public keys must be a mapping of key names to PEM text")
    out = {}
    for name, pem in value.items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise InvalidValue(f"token signing key name {name!r} is not valid: 1 to 128 characters")
        if not isinstance(pem, str) or "-----BEGIN PUBLIC KEY-----" not in pem:
            raise InvalidValue(f"token signing key {name!r} is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
        out[name] = pem
    if len(out) > 2:
        raise LimitExceeded(f"{len(out)} token signing keys given; an authorizer has at most 2 (as on AWS IoT)")
    return out


class PrincipalTables:
    """Authorizers and access keys (methods of `Registry`)."""

    # ------------------------------------------------------------------ helpers inside a transaction

    @staticmethod
    def _require_policies(conn: Connection, names: tuple[str, ...]) -> None:
        if not names:
            return
        found = set(conn.execute(sa.select(t.policies.c.name).where(t.policies.c.name.in_(names))).scalars())
        missing = [n for n in names if n not in found]
        if missing:
            raise NotFound(f"policy {missing[0]!r} does not exist: create it first (iotgate policy create)")

    @staticmethod
    def _granted(conn: Connection, table: sa.Table, owner: str | None = None) -> dict[str, tuple[str, ...]]:
        """owner -> policy names, from authorizer_policies or access_key_policies (one owner, or all)."""
        owner_col, policy_col = table.c[0], table.c.policy_name
        q = sa.select(owner_col, policy_col).order_by(owner_col, policy_col)
        if owner is not None:
            q = q.where(owner_col == owner)
        out: dict[str, list[str]] = defaultdict(list)
        for who, policy in conn.execute(q):
            out[who].append(policy)
        return {k: tuple(v) for k, v in out.items()}

    def _authorizer_policies(self, conn: Connection, name: str | None = None) -> dict[str, tuple[str, ...]]:
        return self._granted(conn, t.authorizer_policies, name)

    def _key_policies(self, conn: Connection, akid: str | None = None) -> dict[str, tuple[str, ...]]:
        return self._granted(conn, t.access_key_policies, akid)

    def _authorizer(self, conn: Connection, name: str) -> Authorizer:
        r = conn.execute(sa.select(t.authorizers).where(t.authorizers.c.name == name)).first()
        if r is None:
            raise NotFound(f"authorizer {name!r} does not exist (iotgate authorizer list)")
        return _row_authorizer(r, self._authorizer_policies(conn, name).get(name, ()))

    def _access_key(self, conn: Connection, akid: str) -> AccessKey:
        r = conn.execute(sa.select(t.access_keys).where(t.access_keys.c.access_key_id == akid)).first()
        if r is None:
            raise NotFound(f"access key {akid} does not exist (iotgate identity list-keys)")
        return _row_key(r, self._key_policies(conn, akid).get(akid, ()))

    def _principal_snapshot(self, conn: Connection) -> tuple[dict[str, Authorizer], dict[str, AccessKey]]:
        ap = self._authorizer_policies(conn)
        kp = self._key_policies(conn)
        authorizers = {r.name: _row_authorizer(r, ap.get(r.name, ())) for r in conn.execute(sa.select(t.authorizers))}
        keys = {r.access_key_id: _row_key(r, kp.get(r.access_key_id, ()))
                for r in conn.execute(sa.select(t.access_keys))}
        return authorizers, keys

    @staticmethod
    def _principals_of_policy(conn: Connection, name: str) -> list[str]:
        ap, kp = t.authorizer_policies.c, t.access_key_policies.c
        owners = [f"authorizer {a}" for a in
                  conn.execute(sa.select(ap.authorizer_name).where(ap.policy_name == name)).scalars()]
        owners += [f"access key {k}" for k in
                   conn.execute(sa.select(kp.access_key_id).where(kp.policy_name == name)).scalars()]
        return owners

    # ------------------------------------------------------------------ authorizers

    def create_authorizer(self, name: str, kind: str, *, config: Mapping[str, Any], signing_disabled: bool = False,
                          token_key_name: str | None = None, signing_keys: Mapping[str, str] | None = None,
                          status: str = "ACTIVE", policies: Iterable[str] = (), default: bool = False) -> Authorizer:
        """A new authorizer. Signing enabled (AWS IoT's default) needs a token key name and a signing key."""
        name = m.authorizer_name(name)
        kind = kind.strip().lower() if isinstance(kind, str) else kind
        if kind not in m.AUTHORIZER_KINDS:
            raise InvalidValue(f"authorizer type {kind!r} is not valid: use one of {', '.join(m.AUTHORIZER_KINDS)}")
        status = m.status(status, m.AUTHORIZER_STATUSES, "authorizer status")
        token_key_name = m.token_key_name(token_key_name)
        keys = _signing_keys(signing_keys)
        if not signing_disabled and (token_key_name is None or not keys):
            raise InvalidValue(f"authorizer {name!r}: token signing is enabled (the default), so a token key name and "
                               "a token signing public key are required; or disable signing")
        if not isinstance(config, Mapping):
            raise InvalidValue("authorizer configuration must be a mapping")
        names = _policy_names(policies)
        now = self._now()
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            if tx.conn.execute(sa.select(t.authorizers.c.name).where(t.authorizers.c.name == name)).first():
                raise AlreadyExists(f"authorizer {name!r} already exists: delete it first or choose another name")
            self._require_policies(tx.conn, names)
            if default:
                tx.conn.execute(sa.update(t.authorizers).values(is_default=False))
            tx.conn.execute(sa.insert(t.authorizers).values(
                name=name, kind=kind, status=status, signing_disabled=bool(signing_disabled),
                token_key_name=token_key_name, signing_keys=_dump(keys), config=_dump(config),
                is_default=bool(default), created_at=now, updated_at=now))
            for policy in names:
                tx.conn.execute(sa.insert(t.authorizer_policies).values(authorizer_name=name, policy_name=policy))
        return Authorizer(name, kind, status, bool(signing_disabled), token_key_name, keys, dict(config),
                          bool(default), now, now, names)

    def get_authorizer(self, name: str) -> Authorizer:
        name = m.authorizer_name(name)
        with self._read() as conn:
            return self._authorizer(conn, name)

    def list_authorizers(self) -> list[Authorizer]:
        with self._read() as conn:
            policies = self._authorizer_policies(conn)
            rows = conn.execute(sa.select(t.authorizers).order_by(t.authorizers.c.name))
            return [_row_authorizer(r, policies.get(r.name, ())) for r in rows]

    def set_authorizer_status(self, name: str, status: str) -> Authorizer:
        name = m.authorizer_name(name)
        status = m.status(status, m.AUTHORIZER_STATUSES, "authorizer status")
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            self._authorizer(tx.conn, name)
            tx.conn.execute(sa.update(t.authorizers).where(t.authorizers.c.name == name)
                            .values(status=status, updated_at=self._now()))
            return self._authorizer(tx.conn, name)

    def delete_authorizer(self, name: str) -> None:
        """Delete an authorizer; sessions it authorized are closed by the gateway."""
        name = m.authorizer_name(name)
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            self._authorizer(tx.conn, name)
            tx.conn.execute(sa.delete(t.authorizer_policies).where(t.authorizer_policies.c.authorizer_name == name))
            tx.conn.execute(sa.delete(t.authorizers).where(t.authorizers.c.name == name))

    # ------------------------------------------------------------------ access keys

    def create_access_key(self, access_key_id: str, identity: str, sealed_secret: str, *,
                          policies: Iterable[str] = (), session_token_sha256: str | None = None,
                          expires_at: datetime | None = None) -> AccessKey:
        """Store a key whose secret is already sealed. A temporary key has a session token hash and an expiry."""
        akid = m.access_key_id(access_key_id)
        identity = m.identity_name(identity)
        if not isinstance(sealed_secret, str) or not sealed_secret:
            raise InvalidValue("the sealed secret of an access key is empty")
        temporary = akid.startswith("ASIA")
        if temporary != (session_token_sha256 is not None) or temporary != (expires_at is not None):
            raise InvalidValue(f"access key {akid}: an ASIA (temporary) key has a session token and an expiry, "
                               "an AKIA key has neither")
        if session_token_sha256 is not None:
            session_token_sha256 = m.hex_id(session_token_sha256, "session token hash")
        if expires_at is not None:
            expires_at = m.aware(expires_at, "access key expiry")
        names = _policy_names(policies)
        now = self._now()
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            if tx.conn.execute(sa.select(t.access_keys.c.access_key_id)
                               .where(t.access_keys.c.access_key_id == akid)).first():
                raise AlreadyExists(f"access key {akid} already exists")
            self._require_policies(tx.conn, names)
            tx.conn.execute(sa.insert(t.access_keys).values(
                access_key_id=akid, identity=identity, status="ACTIVE", sealed_secret=sealed_secret,
                session_token_sha256=session_token_sha256, expires_at=expires_at, created_at=now))
            for policy in names:
                tx.conn.execute(sa.insert(t.access_key_policies).values(access_key_id=akid, policy_name=policy))
        return AccessKey(akid, identity, "ACTIVE", sealed_secret, session_token_sha256, expires_at, now, names)

    def get_access_key(self, access_key_id: str) -> AccessKey:
        akid = m.access_key_id(access_key_id)
        with self._read() as conn:
            return self._access_key(conn, akid)

    def list_access_keys(self, identity: str | None = None) -> list[AccessKey]:
        q = sa.select(t.access_keys).order_by(t.access_keys.c.identity, t.access_keys.c.access_key_id)
        if identity is not None:
            q = q.where(t.access_keys.c.identity == m.identity_name(identity))
        with self._read() as conn:
            policies = self._key_policies(conn)
            return [_row_key(r, policies.get(r.access_key_id, ())) for r in conn.execute(q)]

    def set_access_key_status(self, access_key_id: str, status: str) -> AccessKey:
        akid = m.access_key_id(access_key_id)
        status = m.status(status, m.ACCESS_KEY_STATUSES, "access key status")
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            self._access_key(tx.conn, akid)
            tx.conn.execute(sa.update(t.access_keys).where(t.access_keys.c.access_key_id == akid).values(status=status))
            return self._access_key(tx.conn, akid)

    def delete_access_key(self, access_key_id: str) -> None:
        akid = m.access_key_id(access_key_id)
        with self._write() as tx:
            tx.note(ch.PRINCIPALS, "")
            self._access_key(tx.conn, akid)
            tx.conn.execute(sa.delete(t.access_key_policies).where(t.access_key_policies.c.access_key_id == akid))
            tx.conn.execute(sa.delete(t.access_keys).where(t.access_keys.c.access_key_id == akid))
