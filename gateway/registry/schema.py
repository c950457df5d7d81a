"""Tables of the registry (SQLAlchemy Core). One schema for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

# 2: custom authorizers and SigV4 access keys; 3: the change log; 4: provisioning templates and CA registration
# configs (tables in templates.py). Each version's tables are added in place.
SCHEMA_VERSION = 4


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC in and out on every backend.

    PostgreSQL stores `timestamptz`. SQLite stores the UTC wall time as text, 'YYYY-MM-DD HH:MM:SS.ffffff'
    (SQLAlchemy's own SQLite format: it sorts and compares correctly), parsed back with the C-speed
    `datetime.fromisoformat`.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = sa.MetaData()

_name = sa.String(128)
_hex64 = sa.String(64)
_status = sa.String(20)

registry_state = sa.Table(
    "registry_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("change_counter", sa.BigInteger, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="registry_state_single_row"),
)

things = sa.Table(
    "things",
    metadata,
    sa.Column("name", _name, primary_key=True),
    sa.Column("thing_type", _name, nullable=True),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)

cas = sa.Table(
    "cas",
    metadata,
    sa.Column("ca_id", _hex64, primary_key=True),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("status", _status, nullable=False),
    sa.Column("auto_registration", sa.Boolean, nullable=False),
    sa.Column("is_own", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("status IN ('ACTIVE', 'INACTIVE')", name="cas_status"),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("certificate_id", _hex64, primary_key=True),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("serial_number", sa.String(64), nullable=False),
    sa.Column("subject_cn", sa.Text, nullable=False),
    sa.Column("ca_id", _hex64, sa.ForeignKey("cas.ca_id", name="certificates_ca_fk"), nullable=True),
    sa.Column("status", _status, nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("not_after", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(
        "status IN ('ACTIVE', 'INACTIVE', 'REVOKED', 'PENDING_ACTIVATION')", name="certificates_status"
    ),
    sa.Index("certificates_ca_status", "ca_id", "status"),
    sa.Index("certificates_not_after", "not_after"),
)

policies = sa.Table(
    "policies",
    metadata,
    sa.Column("name", _name, primary_key=True),
    sa.Column("default_version_id", sa.Integer, nullable=False),
    # highest version id ever given: ids are never reused, as on AWS IoT
    sa.Column("last_version_id", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column(
        "policy_name",
        _name,
        sa.ForeignKey("policies.name", name="policy_versions_policy_fk", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("version_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

certificate_policies = sa.Table(
    "certificate_policies",
    metadata,
    sa.Column(
        "certificate_id",
        _hex64,
        sa.ForeignKey("certificates.certificate_id", name="certificate_policies_cert_fk"),
        primary_key=True,
    ),
    sa.Column(
        "policy_name",
        _name,
        sa.ForeignKey("policies.name", name="certificate_policies_policy_fk"),
        primary_key=True,
    ),
    sa.Index("certificate_policies_policy", "policy_name"),
)

thing_principals = sa.Table(
    "thing_principals",
    metadata,
    sa.Column(
        "thing_name",
        _name,
        sa.ForeignKey("things.name", name="thing_principals_thing_fk"),
        primary_key=True,
    ),
    sa.Column(
        "certificate_id",
        _hex64,
        sa.ForeignKey("certificates.certificate_id", name="thing_principals_cert_fk"),
        primary_key=True,
    ),
    sa.Index("thing_principals_cert", "certificate_id"),
)

# --------------------------------------------------------------------------- token and SigV4 principals

authorizers = sa.Table(
    "authorizers",
    metadata,
    sa.Column("name", _name, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", _status, nullable=False),
    sa.Column("signing_disabled", sa.Boolean, nullable=False),
    sa.Column("token_key_name", _name, nullable=True),
    sa.Column("signing_keys", sa.Text, nullable=False),  # JSON {key name: public key PEM}
    sa.Column("config", sa.Text, nullable=False),  # JSON, checked by gateway.auth.authorizers
    sa.Column("is_default", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("status IN ('ACTIVE', 'INACTIVE')", name="authorizers_status"),
    sa.CheckConstraint("kind IN ('jwt', 'command')", name="authorizers_kind"),
)

authorizer_policies = sa.Table(
    "authorizer_policies",
    metadata,
    sa.Column(
        "authorizer_name",
        _name,
        sa.ForeignKey("authorizers.name", name="authorizer_policies_authorizer_fk", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "policy_name", _name, sa.ForeignKey("policies.name", name="authorizer_policies_policy_fk"), primary_key=True
    ),
)

access_keys = sa.Table(
    "access_keys",
    metadata,
    sa.Column("access_key_id", sa.String(32), primary_key=True),
    sa.Column("identity", _name, nullable=False),
    sa.Column("status", _status, nullable=False),
    # the secret access key sealed with the home's key-encryption key (AES-256-GCM): never stored in clear
    sa.Column("sealed_secret", sa.Text, nullable=False),
    sa.Column("session_token_sha256", _hex64, nullable=True),  # temporary keys: only compared, so only hashed
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("status IN ('ACTIVE', 'INACTIVE')", name="access_keys_status"),
    sa.Index("access_keys_identity", "identity"),
)

access_key_policies = sa.Table(
    "access_key_policies",
    metadata,
    sa.Column(
        "access_key_id",
        sa.String(32),
        sa.ForeignKey("access_keys.access_key_id", name="access_key_policies_key_fk", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "policy_name", _name, sa.ForeignKey("policies.name", name="access_key_policies_policy_fk"), primary_key=True
    ),
)

# --------------------------------------------------------------------------- change log

# One row per entity a committed mutation touched, keyed by the mutation's change counter (every counter has at
# least one row: a mutation that names nothing writes kind "all"). Gateways read the rows after the counter they
# hold and re-read only those entities; the oldest rows are pruned, and a reader that finds its next counter gone
# reloads everything.
registry_changes = sa.Table(
    "registry_changes",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("counter", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("key", _name, nullable=False),
    sa.Index("registry_changes_counter", "counter"),
)

TABLE_NAMES = tuple(metadata.tables)
