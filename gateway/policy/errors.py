"""The one error type of the policy engine."""

from __future__ import annotations

from certs.errors import IotgateError


class PolicyError(IotgateError):
    """A policy document was refused, or a policy could not be used.

    Raised by parse_policy as ``PolicyError(where, problem, policy=name)``: the message names the place
    in the document (``Statement[2].Action``) and what to change. ``PolicyError(message)`` also works.
    """

    def __init__(self, where: str, problem: str | None = None, policy: str | None = None) -> None:
        self.where = where if problem is not None else None
        self.problem = problem if problem is not None else where
        self.policy = policy
        prefix = f"policy {policy!r}: " if policy else ""
        super().__init__(f"{prefix}{where}: {problem}" if problem is not None else f"{prefix}{where}")
