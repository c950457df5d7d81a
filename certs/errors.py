"""Errors a user can meet. Every message says what was wrong, with which input, and what to do."""


class IotgateError(Exception):
    """Base of every error the CLI turns into a one-line message and a non-zero exit."""

    exit_code = 2


class PKIError(IotgateError):
    """A key, CSR, certificate or CA was refused or could not be read."""
