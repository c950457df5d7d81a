"""What the gateway knows of the registry: an immutable view built from one Snapshot, off the event loop.

Policies are parsed once per snapshot (a document unchanged since the previous view is reused as is);
each certificate gets a fingerprint of everything its authorization depends on, so a registry change
touches only the live sessions whose fingerprint moved.
"""

from __future__ import annotations

import dataclasses
from gateway.policy import PolicyDocument, PolicyError, ThingInfo, parse_policy
from gateway.registry import Snapshot
from gateway.registry.changes import ChangeSet


@dataclasses.dataclass(frozen=True, slots=True)
class CertState:
    """The authorization-relevant state of one certificate (compared to detect changes)."""

    status: str
    ca_id: str | None
    ca_status: str | None
    policies: tuple[tuple[str, str, str], ...]  # (name, version, compact text)
    things: tuple[tuple[str, str | None, tuple[tuple[str, str], ...]], ...]


class AuthView:
    """Read-only registry view: CA set and statuses, certificates, parsed policies, things."""

    __slots__ = ("counter", "cas", "ca_pems", "ca_set", "auto_registration", "certificates", "cert_policies",
                 "cert_things", "things", "policies", "policy_errors", "authorizers", "access_keys", "default_authorizer", "_parsed",
                 "_states")

    def __init__(self, snapshot: Snapshot, previous: AuthView | None = None) -> None:
        self.counter = snapshot.counter
        self.cas = {ca_id: ca.status for ca_id, ca in snapshot.cas.items()}
        self.ca_pems = tuple(snapshot.cas[ca_id].pem for ca_id in sorted(snapshot.cas))
        self.ca_set = frozenset(snapshot.cas)
        # ACTIVE CAs that register unknown certificates they issued (JITR / JITP)
        self.auto_registration = frozenset(ca_id for ca_id, ca in snapshot.cas.items()
                                           if ca.auto_registration and ca.status == "ACTIVE")
        self.certificates = snapshot.certificates
        self.cert_policies = snapshot.cert_policies
        self.cert_things = snapshot.cert_things
        self.things = snapshot.things
        self.policies: dict[str, PolicyDocument] = {}
        self.policy_errors: dict[str, str] = {}
        # (name, version, source text) -> parsed document or error text, carried over between views
        self._parsed: dict[tuple[str, str, str], PolicyDocument | str] = {}
        old = previous._parsed if previous is not None else {}
        for name, policy in snapshot.policies.items():
            self._set_policy(name, policy, old)
        self._states: dict[str, CertState] = {}
        self.authorizers = snapshot.authorizers
        self.access_keys = snapshot.access_keys
        self.default_authorizer = next((a.name for a in self.authorizers.values() if a.is_default), None)

    def _set_policy(self, name: str, policy, old: dict) -> None:
        key = (name, str(policy.default_version_id), policy.document)
        parsed = old.get(key)
        if parsed is None:
            try:
                parsed = parse_policy(policy.document, name=name, version=key[1])
            except PolicyError as exc:
                parsed = str(exc)
        self._parsed[key] = parsed
        if isinstance(parsed, str):
            self.policy_errors[name] = parsed
            self.policies.pop(name, None)
        else:
            self.policies[name] = parsed
            self.policy_errors.pop(name, None)

    def updated(self, changes: ChangeSet) -> tuple[AuthView, list[str]]:
        """The next view: this one with `changes` applied (the tables are copied, never changed in place, so a
        session still holding this view keeps a consistent one), and the certificates among those this view has
        evaluated whose authorization inputs may have moved."""
        view = AuthView.__new__(AuthView)
        view.counter = changes.counter
        view.cas = self.cas
        view.ca_pems, view.ca_set = self.ca_pems, self.ca_set
        view.auto_registration = self.auto_registration
        if changes.cas:
            cas = dict(self.cas)
            pems = dict(zip(sorted(self.ca_set), self.ca_pems))
            auto = set(self.auto_registration)
            for ca_id, ca in changes.cas.items():
                auto.discard(ca_id)
                if ca is None:
                    cas.pop(ca_id, None)
                    pems.pop(ca_id, None)
                else:
                    cas[ca_id] = ca.status
                    pems[ca_id] = ca.pem
                    if ca.auto_registration and ca.status == "ACTIVE":
                        auto.add(ca_id)
            view.auto_registration = frozenset(auto)
            view.cas = cas
            view.ca_pems = tuple(pems[ca_id] for ca_id in sorted(pems))
            view.ca_set = frozenset(pems)
        view.certificates, view.cert_policies, view.cert_things = \
            self.certificates, self.cert_policies, self.cert_things
        if changes.certificates:
            view.certificates = dict(self.certificates)
            view.cert_policies = dict(self.cert_policies)
            view.cert_things = dict(self.cert_things)
            for cid, cert in changes.certificates.items():
                if cert is None:
                    view.certificates.pop(cid, None)
                    view.cert_policies.pop(cid, None)
                    view.cert_things.pop(cid, None)
                    continue
                view.certificates[cid] = cert
                for table, new in ((view.cert_policies, changes.cert_policies.get(cid, ())),
                                   (view.cert_things, changes.cert_things.get(cid, ()))):
                    if new:
                        table[cid] = new
                    else:
                        table.pop(cid, None)
        view.things = self.things
        if changes.things:
            view.things = dict(self.things)
            for name, thing in changes.things.items():
                if thing is None:
                    view.things.pop(name, None)
                else:
                    view.things[name] = thing
        view.policies, view.policy_errors, view._parsed = self.policies, self.policy_errors, self._parsed
        if changes.policies:
            view.policies, view.policy_errors = dict(self.policies), dict(self.policy_errors)
            view._parsed = {k: v for k, v in self._parsed.items() if k[0] not in changes.policies}
            for name, policy in changes.policies.items():
                if policy is None:
                    view.policies.pop(name, None)
                    view.policy_errors.pop(name, None)
                else:
                    view._set_policy(name, policy, self._parsed)
        view.authorizers, view.access_keys = changes.principals or (self.authorizers, self.access_keys)
        view.default_authorizer = next((a.name for a in view.authorizers.values() if a.is_default), None)
        view._states = dict(self._states)  # one C-level copy: the loop may be adding to ours meanwhile
        affected = [cid for cid in view._states if view.touched_by(cid, changes)]
        for cid in affected:
            del view._states[cid]
        return view, affected

    def touched_by(self, certificate_id: str, changes: ChangeSet) -> bool:
        """Whether `changes` (already applied to this view) may have moved this certificate's state."""
        if certificate_id in changes.certificates:
            return True
        if changes.cas:
            cert = self.certificates.get(certificate_id)
            if cert is not None and cert.ca_id in changes.cas:
                return True
        if changes.policies and any(p in changes.policies for p in self.cert_policies.get(certificate_id, ())):
            return True
        return bool(changes.things) and any(n in changes.things for n in self.cert_things.get(certificate_id, ()))

    def ca_status(self, ca_id: str | None) -> str | None:
        return self.cas.get(ca_id) if ca_id else None

    def thing_infos(self, certificate_id: str) -> tuple[ThingInfo, ...]:
        infos = []
        for name in self.cert_things.get(certificate_id, ()):
            thing = self.things.get(name)
            if thing is not None:
                infos.append(ThingInfo(name=thing.name, thing_type=thing.thing_type, attributes=thing.attributes))
        return tuple(infos)

    def state(self, certificate_id: str) -> CertState | None:
        """The fingerprint of one certificate's authorization inputs, or None when it is not registered."""
        state = self._states.get(certificate_id)
        if state is not None:
            return state
        cert = self.certificates.get(certificate_id)
        if cert is None:
            return None
        policies = []
        for name in self.cert_policies.get(certificate_id, ()):
            doc = self.policies.get(name)
            if doc is None:
                policies.append((name, "?", self.policy_errors.get(name, "missing")))
            else:
                policies.append((name, doc.version, doc.text))
        things = []
        for name in self.cert_things.get(certificate_id, ()):
            thing = self.things.get(name)
            if thing is not None:
                things.append((thing.name, thing.thing_type, tuple(sorted(thing.attributes.items()))))
        state = CertState(cert.status, cert.ca_id, self.ca_status(cert.ca_id), tuple(policies), tuple(things))
        self._states[certificate_id] = state
        return state


    def _policy_fingerprint(self, names) -> tuple[tuple[str, str, str], ...]:
        out = []
        for name in names:
            doc = self.policies.get(name)
            out.append((name, "?", self.policy_errors.get(name, "missing")) if doc is None
                       else (name, doc.version, doc.text))
        return tuple(out)

    def authorizer_state(self, name: str) -> tuple | None:
        """Fingerprint of everything a custom authorizer's decisions depend on here (None: no such authorizer)."""
        a = self.authorizers.get(name)
        if a is None:
            return None
        return ("authorizer", a.status, a.kind, a.signing_disabled, a.token_key_name,
                tuple(sorted(a.signing_keys.items())), repr(sorted(a.config.items())),
                self._policy_fingerprint(a.policies))

    def key_state(self, access_key_id: str) -> tuple | None:
        """Fingerprint of an access key and its policies (None: no such key)."""
        k = self.access_keys.get(access_key_id)
        if k is None:
            return None
        return ("sigv4", k.status, k.identity, k.expires_at, k.sealed_secret, k.session_token_sha256,
                self._policy_fingerprint(k.policies))


def documents(view: AuthView, names) -> tuple[list[PolicyDocument], list[str]]:
    """The parsed registry policies named, and the problems of those that cannot be used."""
    docs: list[PolicyDocument] = []
    problems: list[str] = []
    for name in names:
        doc = view.policies.get(name)
        if doc is None:
            problems.append(f"policy {name!r} cannot be used: {view.policy_errors.get(name, 'not found')}")
        else:
            docs.append(doc)
    return docs, problems


def empty_view() -> AuthView:
    return AuthView(Snapshot(counter=-1, things={}, cas={}, certificates={}, policies={}, cert_policies={},
                             cert_things={}))


def attached_documents(view: AuthView, certificate_id: str) -> tuple[list[PolicyDocument], list[str]]:
    """The parsed policies attached to a certificate and the problems of those that cannot be used."""
    return documents(view, view.cert_policies.get(certificate_id, ()))
