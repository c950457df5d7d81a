"""Render a Decision as one ``authResults`` entry of the AWS IoT TestAuthorization API."""

from __future__ import annotations

from typing import Any, Sequence

from gateway.policy.document import CANONICAL_ACTIONS, PolicyDocument
from gateway.policy.engine import DEFAULT_ACCOUNT, DEFAULT_REGION
from gateway.policy.model import Decision, Request

_ACTION_TYPES = {"iot:connect": "CONNECT", "iot:publish": "PUBLISH", "iot:subscribe": "SUBSCRIBE", "iot:receive": "RECEIVE"}


def _policy_ref(doc: PolicyDocument, partition: str, region: str, account: str) -> dict[str, str]:
    return {"policyName": doc.name, "policyArn": f"arn:{partition}:iot:{region}:{account}:policy/{doc.name}"}


def test_authorization_response(
    decision: Decision,
    request: Request,
    policies: Sequence[PolicyDocument],
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
    partition: str = "aws",
) -> dict[str, Any]:
    """The TestAuthorization ``authResults`` entry for ``request`` decided as ``decision``.

    ``actionType`` is CONNECT/PUBLISH/SUBSCRIBE/RECEIVE as in the AWS API; other actions are shown
    by their upper-cased name (e.g. ``RETAINPUBLISH``). ``allowed`` lists the policies whose Allow
    statements matched, ``explicitDeny`` those whose Deny statements matched; on an implicit deny
    every evaluated policy is listed under ``implicitDeny``.
    """
    action = request.action if isinstance(request.action, str) else str(request.action)
    lowered = action.lower()
    action_type = _ACTION_TYPES.get(lowered) or CANONICAL_ACTIONS.get(lowered, action).partition(":")[2].upper()
    resource = request.resource if isinstance(request.resource, str) else str(request.resource)
    if resource != "*" and not resource.startswith("arn:"):
        resource = f"arn:{partition}:iot:{region}:{account}:{resource}"
    by_name = {doc.name: doc for doc in policies}

    def refs(effect: str) -> list[dict[str, str]]:
        seen: list[str] = []
        for d in decision.decided_by:
            if d.effect == effect and d.policy not in seen:
                seen.append(d.policy)
        return [
            _policy_ref(by_name[n], partition, region, account)
            if n in by_name
            else {"policyName": n, "policyArn": f"arn:{partition}:iot:{region}:{account}:policy/{n}"}
            for n in seen
        ]

    auth = decision.auth_decision
    return {
        "authInfo": {"actionType": action_type, "resources": [resource]},
        "allowed": {"policies": refs("Allow") if auth == "ALLOWED" else []},
        "denied": {
            "implicitDeny": {
                "policies": [_policy_ref(d, partition, region, account) for d in policies] if auth == "IMPLICIT_DENY" else []
            },
            "explicitDeny": {"policies": refs("Deny") if auth == "EXPLICIT_DENY" else []},
        },
        "authDecision": auth,
        "missingContextValues": [],
    }


test_authorization_response.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
