"""`iotgate identity`: SigV4 access keys for apps and devices that connect over MQTT on WebSocket."""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets

import click

from gateway.auth.secrets import SecretBox, token_digest
from gateway.registry import AccessKey
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app, when

MAX_SESSION = 12 * 3600


@click.group()
def identity() -> None:
    """SigV4 identities: access keys whose signed WebSocket connections get the key's policies."""


def new_access_key_id(temporary: bool) -> str:
    return ("ASIA" if temporary else "AKIA") + base64.b32encode(os.urandom(10)).decode("ascii")


def new_secret() -> str:
    return base64.b64encode(os.urandom(30)).decode("ascii")


def key_json(k: AccessKey) -> dict:
    return {"AccessKeyId": k.access_key_id, "Identity": k.identity, "Status": k.status,
            "Temporary": k.session_token_sha256 is not None, "Expiration": when(k.expires_at),
            "Policies": list(k.policies), "CreateDate": when(k.created_at)}


@identity.command("create-key")
@click.argument("name")
@click.option("--policy", "policies", multiple=True, metavar="NAME", required=True,
              help="Registry policy the key's connections get (repeatable, up to 10).")
@click.option("--session-duration", type=click.IntRange(900, MAX_SESSION), metavar="SECONDS",
              help="Temporary credentials (ASIA key + session token) valid this long, 900..43200 s.")
@json_option
@pass_app
def create_key(app: AppContext, name: str, policies: tuple[str, ...], session_duration: int | None,
               as_json: bool) -> None:
    """Issue an access key for identity NAME. The secret is shown once: it is stored only sealed, with the home's
    secrets.key (created 0600 on first use)."""
    app.require_home()
    box = SecretBox.load(app.home, create=True)
    temporary = session_duration is not None
    akid = new_access_key_id(temporary)
    secret = new_secret()
    token = secrets.token_urlsafe(96) if temporary else None
    expires = app.clock() + dt.timedelta(seconds=session_duration) if temporary else None
    key = app.registry().create_access_key(akid, name, box.seal(akid, secret), policies=policies,
                                           session_token_sha256=token_digest(token) if token else None,
                                           expires_at=expires)
    data = {"AccessKeyId": key.access_key_id, "SecretAccessKey": secret, "Identity": key.identity,
            "Policies": list(key.policies)}
    if token:
        data.update(SessionToken=token, Expiration=when(expires))
    if as_json:
        emit_json(data)
        return
    for field, value in data.items():
        console.print(f"{field}: {value}", soft_wrap=True)
    console.print("the secret is not shown again; it is stored sealed, never in clear")


@identity.command("list-keys")
@click.argument("name", required=False)
@json_option
@pass_app
def list_keys(app: AppContext, name: str | None, as_json: bool) -> None:
    """List access keys (of identity NAME). Secrets are never shown."""
    rows = app.registry().list_access_keys(name)
    if as_json:
        emit_json([key_json(k) for k in rows])
        return
    emit_table(None, ["access key", "identity", "status", "expires", "policies"],
               [(k.access_key_id, k.identity, k.status, when(k.expires_at) or "-", ",".join(k.policies))
                for k in rows])


@identity.command("set-key-status")
@click.argument("access_key_id")
@click.argument("status", type=click.Choice(["ACTIVE", "INACTIVE"], case_sensitive=False))
@pass_app
def set_key_status(app: AppContext, access_key_id: str, status: str) -> None:
    """ACTIVE or INACTIVE (its live connections are closed within a second)."""
    k = app.registry().set_access_key_status(access_key_id, status)
    console.print(f"access key {k.access_key_id} is {k.status}")


@identity.command("delete-key")
@click.argument("access_key_id")
@pass_app
def delete_key(app: AppContext, access_key_id: str) -> None:
    """Delete an access key (its live connections are closed within a second)."""
    app.registry().delete_access_key(access_key_id)
    console.print(f"access key {access_key_id} deleted")
