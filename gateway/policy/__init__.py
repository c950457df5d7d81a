"""Pure AWS IoT Core policy engine: parse, compile, evaluate -> Decision(allowed, decided_by, errors).

No I/O: documents come in as text or mappings, identities as values, answers go out as values.
"""

from gateway.policy.document import PolicyDocument, Statement, check_request, parse_policy
from gateway.policy.engine import CompiledPolicies, DecisionCache, compile_policies, evaluate
from gateway.policy.errors import PolicyError
from gateway.policy.lint import Finding, lint
from gateway.policy.model import Decision, DecidedBy, Identity, Request, ThingInfo
from gateway.policy.testauth import test_authorization_response

__all__ = [
    "CompiledPolicies",
    "Decision",
    "DecidedBy",
    "DecisionCache",
    "Finding",
    "Identity",
    "PolicyDocument",
    "PolicyError",
    "Request",
    "Statement",
    "ThingInfo",
    "check_request",
    "compile_policies",
    "evaluate",
    "lint",
    "parse_policy",
    "test_authorization_response",
]
