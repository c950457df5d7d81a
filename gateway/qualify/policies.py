"""Which AWS IoT policy a device is judged against: a policy file named by the suite, or the policies attached to
the device's certificate in the registry, bound to the identity of the certificate it connected with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography import x509

from gateway.auth import AuthRefusal, AuthView, X509Authenticator, certificate_id_of
from gateway.auth.view import attached_documents
from gateway.policy import CompiledPolicies, Identity, PolicyDocument, PolicyError, compile_policies, parse_policy

__all__ = ["BoundPolicies", "PolicySource"]


@dataclasses.dataclass(frozen=True, slots=True)
class BoundPolicies:
    compiled: CompiledPolicies
    documents: tuple[tuple[str, PolicyDocument], ...]
    description: str


class PolicySource:
    def __init__(self, view: AuthView | None, *, region: str = "us-east-1", account: str = "123456789012") -> None:
        self.view = view
        self.region = region
        self.account = account
        self.authenticator = X509Authenticator(region=region, account=account)

    def bind(self, der: bytes | None, policy_file: str | None) -> BoundPolicies:
        """The policies for this certificate; LookupError (with a message for the report) when there are none."""
        if not der:
            raise LookupError("the device presented no certificate to bind a policy to")
        cert_id = certificate_id_of(der)
        if policy_file:
            path = Path(policy_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise LookupError(f"policy file {path}: {exc.strerror}") from None
            try:
                doc = parse_policy(text, name=path.stem, version="file")
            except PolicyError as exc:
                raise LookupError(f"policy file {path}: {exc}") from None
            things = self.view.thing_infos(cert_id) if self.view is not None else ()
            identity = Identity.from_certificate(x509.load_der_x509_certificate(der), things=things)
            compiled = compile_policies([doc], identity, self.region, self.account)
            return BoundPolicies(compiled, ((doc.name, doc),), f"policy file {path}")
        if self.view is None:
            raise LookupError("no registry to read the certificate's policies from; give the case a policy file")
        result = self.authenticator.authenticate(der, self.view)
        if isinstance(result, AuthRefusal):
            raise LookupError(f"the device's certificate {cert_id[:12]}... cannot be judged by its registry policies "
                              f"({result.reason}); register it with a policy, or give the case a policy file")
        docs, _ = attached_documents(self.view, cert_id)
        names = ", ".join(f"{d.name!r} v{d.version}" for d in docs) or "none"
        return BoundPolicies(result.compiled, tuple((d.name, d) for d in docs),
                             f"the registry policies of certificate {cert_id[:12]}... ({names})")
