"""`iotgate template`: provisioning templates (fleet provisioning by claim, JITP)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from devices.provisioning import ProvisioningError
from gateway.provisioning.template import TemplateError, parse
from gateway.registry import ProvisioningTemplate
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when


@click.group()
def template() -> None:
    """Provisioning templates: create, list, show, update, delete."""


def template_json(t: ProvisioningTemplate) -> dict:
    return {"templateName": t.name, "type": t.template_type, "description": t.description, "enabled": t.enabled,
            "defaultVersionId": t.version, "provisioningRoleArn": t.role_arn,
            "preProvisioningHook": t.pre_provisioning_hook, "templateBody": t.body,
            "creationDate": when(t.created_at), "lastModifiedDate": when(t.updated_at)}


def _read_body(path: Path) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProvisioningError(f"{path}: file not found") from None
    try:
        parse(text)
    except TemplateError as exc:
        raise ProvisioningError(f"{path}: {exc}") from None
    return text


def _hook(value: str | None) -> dict | None:
    return None if value is None else {"targetArn": value, "payloadVersion": "2020-04-01"}


@template.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "template_type", type=click.Choice(["FLEET_PROVISIONING", "JITP"]),
              default="FLEET_PROVISIONING", show_default=True)
@click.option("--description", default="")
@click.option("--disabled", is_flag=True, help="Create it disabled (devices cannot provision with it yet).")
@click.option("--role-arn", help="Kept for `iotgate aws sync` (AWS's provisioningRoleArn).")
@click.option("--pre-provisioning-hook", "hook", metavar="COMMAND|URL",
              help="Fleet provisioning: a program (the request as JSON on stdin) or a loopback URL that answers "
                   "{\"allowProvisioning\": true|false, \"parameterOverrides\": {...}} within 5 s.")
@pass_app
def create(app: AppContext, name: str, file: Path, template_type: str, description: str, disabled: bool,
           role_arn: str | None, hook: str | None) -> None:
    """Create a provisioning template from a JSON FILE (checked as AWS IoT would: sections, resources, functions)."""
    row = app.registry().create_provisioning_template(name, _read_body(file), template_type=template_type,
                                                      description=description, enabled=not disabled,
                                                      role_arn=role_arn, pre_provisioning_hook=_hook(hook))
    console.print(f"provisioning template {row.name} created ({row.template_type}, "
                  f"{'enabled' if row.enabled else 'disabled'})")


@template.command("update")
@click.argument("name")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), help="A new body: a new version.")
@click.option("--description")
@click.option("--enabled/--disabled", default=None)
@click.option("--role-arn")
@click.option("--pre-provisioning-hook", "hook", metavar="COMMAND|URL")
@click.option("--remove-pre-provisioning-hook", is_flag=True)
@pass_app
def update(app: AppContext, name: str, file: Path | None, description: str | None, enabled: bool | None,
           role_arn: str | None, hook: str | None, remove_pre_provisioning_hook: bool) -> None:
    """Change a template: its body (a new version), description, enabled, pre-provisioning hook."""
    kwargs: dict = {}
    if remove_pre_provisioning_hook:
        kwargs["pre_provisioning_hook"] = None
    elif hook is not None:
        kwargs["pre_provisioning_hook"] = _hook(hook)
    row = app.registry().update_provisioning_template(
        name, body=_read_body(file) if file is not None else None, description=description, enabled=enabled,
        role_arn=role_arn, **kwargs)
    console.print(f"provisioning template {row.name}: version {row.version}, "
                  f"{'enabled' if row.enabled else 'disabled'}")


@template.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List provisioning templates."""
    rows = app.registry().list_provisioning_templates()
    if as_json:
        emit_json([template_json(t) for t in rows])
        return
    emit_table(f"{len(rows)} provisioning template(s)", ["template", "type", "enabled", "version", "description"],
               ((t.name, t.template_type, "yes" if t.enabled else "no", t.version, t.description) for t in rows))


@template.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show a template and its body."""
    row = app.registry().get_provisioning_template(name)
    if as_json:
        emit_json(template_json(row))
        return
    console.print(f"template    {row.name} ({row.template_type}, {'enabled' if row.enabled else 'disabled'}, "
                  f"version {row.version})")
    if row.pre_provisioning_hook:
        console.print(f"hook        {row.pre_provisioning_hook['targetArn']}", markup=False)
    console.print(json.dumps(json.loads(row.body), indent=2), markup=False)


@template.command("delete")
@click.argument("name")
@pass_app
def delete(app: AppContext, name: str) -> None:
    """Delete a template."""
    app.registry().delete_provisioning_template(name)
    console.print(f"provisioning template {name} deleted")
