"""Errors of the registry. Each message names the input that was refused and what to do."""

from certs.errors import IotgateError


class RegistryError(IotgateError):
    """The registry refused an operation or could not be reached."""


class InvalidValue(RegistryError):
    """An argument does not have the required form (name, id, status, timestamp...)."""


class NotFound(RegistryError):
    """A thing, CA, certificate, policy, version or attachment does not exist."""


class AlreadyExists(RegistryError):
    """A thing, CA, certificate or policy with that name or id is already registered."""


class InvalidTransition(RegistryError):
    """A status change that is not allowed (e.g. out of REVOKED, which is final)."""


class LimitExceeded(RegistryError):
    """A limit of AWS IoT would be exceeded (5 policy versions, 10 policies per certificate)."""


class Conflict(RegistryError):
    """The operation conflicts with the current state (attached policy, ambiguous prefix...)."""
