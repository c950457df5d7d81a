"""Registry of things, CAs, certificates, policies and attachments (SQLite by default, PostgreSQL option).

Writers call the Registry methods; the gateway polls `change_counter()` and reloads `snapshot()`.
"""

from .errors import (
    AlreadyExists,
    Conflict,
    InvalidTransition,
    InvalidValue,
    LimitExceeded,
    NotFound,
    RegistryError,
)
from .model import (
    ACCESS_KEY_STATUSES,
    AUTHORIZER_KINDS,
    AUTHORIZER_STATUSES,
    CA,
    AccessKey,
    Authorizer,
    CA_STATUSES,
    CERTIFICATE_STATUSES,
    MAX_POLICIES_PER_CERTIFICATE,
    MAX_POLICY_VERSIONS,
    Certificate,
    Policy,
    PolicyVersion,
    ProvisionItem,
    ProvisioningTemplate,
    Snapshot,
    Thing,
)
from .store import NOTIFY_CHANNEL, Registry, sqlite_url

__all__ = [
    "ACCESS_KEY_STATUSES",
    "AUTHORIZER_KINDS",
    "AUTHORIZER_STATUSES",
    "AccessKey",
    "Authorizer",
    "AlreadyExists",
    "CA",
    "CA_STATUSES",
    "CERTIFICATE_STATUSES",
    "Certificate",
    "Conflict",
    "InvalidTransition",
    "InvalidValue",
    "LimitExceeded",
    "MAX_POLICIES_PER_CERTIFICATE",
    "MAX_POLICY_VERSIONS",
    "NOTIFY_CHANNEL",
    "NotFound",
    "Policy",
    "PolicyVersion",
    "ProvisionItem",
    "ProvisioningTemplate",
    "Registry",
    "RegistryError",
    "Snapshot",
    "Thing",
    "sqlite_url",
]
