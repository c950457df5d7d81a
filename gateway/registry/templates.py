"""Registry tables of provisioning: provisioning templates and the registration config of auto-registration CAs.

Mixed into `Registry` (same transactions, same change counter). The registry stores a template body after
checking it is a JSON object of at most 10,240 characters; `gateway.provisioning.template` checks what it says
before it gets here (the CLI parses it first), so the registry does not depend on the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import changes as ch
from . import model as m
from . import schema as t
from .errors import AlreadyExists, InvalidValue, NotFound
from .model import ProvisioningTemplate

TEMPLATE_TYPES = ("FLEET_PROVISIONING", "JITP")
MAX_TEMPLATE_BODY = 10_240

provisioning_templates = sa.Table(
    "provisioning_templates",
    t.metadata,
    sa.Column("name", sa.String(36), primary_key=True),
    sa.Column("template_type", sa.String(20), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("role_arn", sa.Text, nullable=True),
    sa.Column("pre_provisioning_hook", sa.Text, nullable=True),  # JSON {"targetArn": ..., "payloadVersion": ...}
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", t.UTCDateTime, nullable=False),
    sa.Column("updated_at", t.UTCDateTime, nullable=False),
    sa.CheckConstraint("template_type IN ('FLEET_PROVISIONING', 'JITP')", name="provisioning_templates_type"),
)

ca_registration = sa.Table(
    "ca_registration",
    t.metadata,
    sa.Column("ca_id", sa.String(64), sa.ForeignKey("cas.ca_id", name="ca_registration_ca_fk", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("template_body", sa.Text, nullable=True),
    sa.Column("template_name", sa.String(36), nullable=True),
    sa.Column("role_arn", sa.Text, nullable=True),
)

_TEMPLATE_NAME = re.compile(r"[0-9A-Za-z_-]{1,36}")  # AWS IoT's templateName pattern


def template_name(value: Any) -> str:
    value = m.text_field(value, "template name")
    if not _TEMPLATE_NAME.fullmatch(value):
        raise InvalidValue(f"template name {value[:40]!r} is not valid: use 1 to 36 characters among letters, "
                           "digits, '_' and '-'")
    return value


def template_body(value: Any) -> str:
    value = m.text_field(value, "template body")
    if len(value) > MAX_TEMPLATE_BODY:
        raise InvalidValue(f"the template body has {len(value)} characters, at most {MAX_TEMPLATE_BODY}")
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise InvalidValue(f"the template body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidValue("the template body is not a JSON object")
    return value


def _row(r) -> ProvisioningTemplate:
    hook = json.loads(r.pre_provisioning_hook) if r.pre_provisioning_hook else None
    return ProvisioningTemplate(r.name, r.template_type, r.body, r.description, bool(r.enabled), r.role_arn, hook,
                                r.version, r.created_at, r.updated_at)


class TemplateTables:
    """Provisioning templates and CA registration configs (methods of `Registry`)."""

    # ------------------------------------------------------------------ provisioning templates

    def create_provisioning_template(self, name: str, body: str, *, template_type: str = "FLEET_PROVISIONING",
                                     description: str = "", enabled: bool = True, role_arn: str | None = None,
                                     pre_provisioning_hook: Mapping[str, str] | None = None) -> ProvisioningTemplate:
        name = template_name(name)
        body = template_body(body)
        template_type = m.status(template_type, TEMPLATE_TYPES, "template type")
        hook = json.dumps(dict(pre_provisioning_hook), sort_keys=True) if pre_provisioning_hook else None
        if hook and template_type != "FLEET_PROVISIONING":
            raise InvalidValue("a pre-provisioning hook applies to FLEET_PROVISIONING templates only")
        now = self._now()
        c = provisioning_templates.c
        with self._write() as tx:
            if tx.conn.execute(sa.select(c.name).where(c.name == name)).first():
                raise AlreadyExists(f"provisioning template {name!r} already exists")
            tx.conn.execute(sa.insert(provisioning_templates).values(
                name=name, template_type=template_type, body=body, description=description or "",
                enabled=bool(enabled), role_arn=role_arn, pre_provisioning_hook=hook, version=1, created_at=now,
                updated_at=now))
        return ProvisioningTemplate(name, template_type, body, description or "", bool(enabled), role_arn,
                                    json.loads(hook) if hook else None, 1, now, now)

    def _template_row(self, conn: Connection, name: str):
        row = conn.execute(sa.select(provisioning_templates).where(provisioning_templates.c.name == name)).first()
        if row is None:
            raise NotFound(f"provisioning template {name!r} does not exist")
        return row

    def get_provisioning_template(self, name: str) -> ProvisioningTemplate:
        name = template_name(name)
        with self._read() as conn:
            return _row(self._template_row(conn, name))

    def list_provisioning_templates(self) -> list[ProvisioningTemplate]:
        with self._read() as conn:
            rows = conn.execute(sa.select(provisioning_templates).order_by(provisioning_templates.c.name))
            return [_row(r) for r in rows]

    def update_provisioning_template(self, name: str, *, body: str | None = None, description: str | None = None,
                                     enabled: bool | None = None, role_arn: str | None = None,
                                     pre_provisioning_hook: Mapping[str, str] | None | Any = ...
                                     ) -> ProvisioningTemplate:
        """Change what is given; a new body makes a new version."""
        name = template_name(name)
        values: dict[str, Any] = {}
        if body is not None:
            values["body"] = template_body(body)
        if description is not None:
            values["description"] = description
        if enabled is not None:
            values["enabled"] = bool(enabled)
        if role_arn is not None:
            values["role_arn"] = role_arn
        if pre_provisioning_hook is not ...:
            values["pre_provisioning_hook"] = (json.dumps(dict(pre_provisioning_hook), sort_keys=True)
                                               if pre_provisioning_hook else None)
        with self._write() as tx:
            row = self._template_row(tx.conn, name)
            if values.get("pre_provisioning_hook") and row.template_type != "FLEET_PROVISIONING":
                raise InvalidValue("a pre-provisioning hook applies to FLEET_PROVISIONING templates only")
            if "body" in values and values["body"] != row.body:
                values["version"] = row.version + 1
            values["updated_at"] = self._now()
            tx.conn.execute(sa.update(provisioning_templates).where(provisioning_templates.c.name == name)
                            .values(**values))
            row = self._template_row(tx.conn, name)
        return _row(row)

    def delete_provisioning_template(self, name: str) -> None:
        name = template_name(name)
        with self._write() as tx:
            self._template_row(tx.conn, name)
            users = tx.conn.execute(sa.select(ca_registration.c.ca_id).where(
                ca_registration.c.template_name == name)).scalars().all()
            if users:
                raise InvalidValue(f"provisioning template {name!r} is the JITP template of CA {users[0]}: "
                                   "change that CA's registration config first")
            tx.conn.execute(sa.delete(provisioning_templates).where(provisioning_templates.c.name == name))

    # ------------------------------------------------------------------ CA registration config (JITP)

    def set_ca_registration(self, ca_id: str, *, auto_registration: bool,
                            template_body_text: str | None = None, template: str | None = None,
                            role_arn: str | None = None) -> None:
        """Auto-registration of a CA (AWS's allowAutoRegistration / autoRegistrationStatus) and its registration
        config: a template body (JITP) or the name of a JITP template; neither means JITR."""
        if template_body_text is not None and template is not None:
            raise InvalidValue("give a template body or a template name, not both")
        body = template_body(template_body_text) if template_body_text is not None else None
        name = template_name(template) if template is not None else None
        with self._write() as tx:
            ident = self._resolve_ca(tx.conn, ca_id)
            if name is not None:
                row = self._template_row(tx.conn, name)
                if row.template_type != "JITP":
                    raise InvalidValue(f"provisioning template {name!r} is of type {row.template_type}: a CA's "
                                       "registration config names a JITP template")
            tx.conn.execute(sa.update(t.cas).where(t.cas.c.ca_id == ident)
                            .values(auto_registration=bool(auto_registration)))
            tx.note(ch.CA_KIND, ident)
            tx.conn.execute(sa.delete(ca_registration).where(ca_registration.c.ca_id == ident))
            if body is not None or name is not None:
                tx.conn.execute(sa.insert(ca_registration).values(ca_id=ident, template_body=body,
                                                                  template_name=name, role_arn=role_arn))

    def ca_registration_template(self, ca_id: str) -> tuple[str | None, str | None]:
        """(template body, role ARN) of a CA's registration config; (None, None) when it has none (JITR)."""
        with self._read() as conn:
            ident = self._resolve_ca(conn, ca_id)
            row = conn.execute(sa.select(ca_registration).where(ca_registration.c.ca_id == ident)).first()
            if row is None:
                return None, None
            if row.template_name is not None:
                return self._template_row(conn, row.template_name).body, row.role_arn
            return row.template_body, row.role_arn

    def ca_registration_configs(self) -> dict[str, tuple[str, str | None]]:
        """CA id -> (template body, role ARN) for every CA with a registration template."""
        out = {}
        with self._read() as conn:
            for row in conn.execute(sa.select(ca_registration)):
                body = row.template_body
                if row.template_name is not None:
                    body = self._template_row(conn, row.template_name).body
                out[row.ca_id] = (body, row.role_arn)
        return out
