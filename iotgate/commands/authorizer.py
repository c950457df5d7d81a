"""`iotgate authorizer`: custom authorizers (AWS IoT's CreateAuthorizer, DescribeAuthorizer, TestInvokeAuthorizer)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import shlex
import sys
from pathlib import Path

import click
import jwt

from certs.errors import IotgateError
from gateway.auth.authorizers import (AuthorizerConfigError, Credentials, CustomAuthenticator, load_signing_key,
                                      parse_settings)
from gateway.auth.view import AuthView
from gateway.registry import Authorizer
from iotgate.context import AppContext, console, emit_json, emit_table, err_console, json_option, pass_app, when
from devices.provisioning import read_text


class AuthorizerInputError(IotgateError):
    pass


@click.group()
def authorizer() -> None:
    """Custom authorizers: devices without certificates authenticate with a token (JWT/OIDC or your own logic)."""


def authorizer_json(a: Authorizer, region: str = "us-east-1", account: str = "123456789012") -> dict:
    return {"authorizerName": a.name, "authorizerArn": f"arn:aws:iot:{region}:{account}:authorizer/{a.name}",
            "type": a.kind, "status": a.status, "signingDisabled": a.signing_disabled,
            "tokenKeyName": a.token_key_name, "tokenSigningPublicKeys": a.signing_keys, "config": a.config,
            "policies": list(a.policies), "default": a.is_default, "creationDate": when(a.created_at),
            "lastModifiedDate": when(a.updated_at)}


def _signing_keys(values: tuple[str, ...]) -> dict[str, str]:
    keys = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        pem = read_text(Path(path))
        try:
            load_signing_key(pem)
        except AuthorizerConfigError as exc:
            raise AuthorizerInputError(f"--signing-key {value}: {exc}") from None
        keys[name] = pem
    return keys


def _config(kind: str, *, jwks_file, jwks_url, oidc_issuer, issuer, audience, algorithms, leeway, principal_claim,
            command, url, timeout) -> dict:
    if kind == "jwt":
        config: dict = {}
        if command or url:
            raise AuthorizerInputError("--command and --url are for --type command")
        if jwks_file:
            path = Path(jwks_file).expanduser().resolve()
            try:
                jwt.PyJWKSet.from_json(read_text(path))
            except jwt.PyJWTError as exc:
                raise AuthorizerInputError(f"--jwks-file {jwks_file}: not a usable JWKS: {exc}") from None
            config["jwks_file"] = str(path)
        for key, value in (("jwks_url", jwks_url), ("oidc_issuer", oidc_issuer), ("issuer", issuer),
                           ("principal_claim", principal_claim)):
            if value:
                config[key] = value
        if audience:
            config["audience"] = list(audience)
        if algorithms:
            config["algorithms"] = list(algorithms)
        if leeway is not None:
            config["leeway"] = leeway
    else:
        if jwks_file or jwks_url or oidc_issuer or issuer or audience or algorithms or principal_claim:
            raise AuthorizerInputError("the JWT options are for --type jwt")
        config = {}
        if command:
            config["command"] = shlex.split(command)
        if url:
            config["url"] = url
        if timeout is not None:
            config["timeout"] = timeout
    try:
        parse_settings(kind, config)
    except AuthorizerConfigError as exc:
        raise AuthorizerInputError(f"authorizer settings: {exc}") from None
    return config


@authorizer.command("create")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(["jwt", "command"]), required=True,
              help="jwt: verify a JWT against a JWKS; command: a program or loopback URL answering as a Lambda.")
@click.option("--token-key-name", metavar="KEY", help="Where the token is: username query / header name.")
@click.option("--signing-key", "signing_keys", multiple=True, metavar="[NAME=]FILE",
              help="Token-signing public key (RSA >= 2048 PEM); up to 2.")
@click.option("--signing-disabled", is_flag=True,
              help="Accept tokens without x-amz-customauthorizer-signature (AWS: not recommended).")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="jwt: registry policy granted to every valid token (repeatable, up to 10).")
@click.option("--default", "is_default", is_flag=True, help="Use it when a device names no authorizer.")
@click.option("--inactive", is_flag=True, help="Create it INACTIVE (devices naming it are refused).")
@click.option("--jwks-file", type=click.Path(dir_okay=False), help="jwt: the JWKS file.")
@click.option("--jwks-url", metavar="URL", help="jwt: the JWKS URL (https; http only on loopback).")
@click.option("--oidc-issuer", metavar="URL", help="jwt: an OIDC issuer (its discovery document names the JWKS).")
@click.option("--issuer", metavar="ISS", help="jwt: required iss (default: --oidc-issuer).")
@click.option("--audience", multiple=True, metavar="AUD", help="jwt: accepted aud (repeatable; required).")
@click.option("--algorithm", "algorithms", multiple=True, metavar="ALG", help="jwt: accepted alg (default RS256, ES256).")
@click.option("--leeway", type=int, help="jwt: clock skew allowed on exp/nbf/iat, seconds (default 60).")
@click.option("--principal-claim", metavar="CLAIM", help="jwt: the claim naming the principal (default sub).")
@click.option("--command", metavar="'PROGRAM ARGS'", help="command: the program (event on stdin, answer on stdout).")
@click.option("--url", metavar="URL", help="command: a loopback HTTP endpoint (POST of the event).")
@click.option("--timeout", type=float, help="command: seconds to wait for an answer (default 5).")
@json_option
@pass_app
def create(app: AppContext, name: str, kind: str, token_key_name, signing_keys, signing_disabled, policies,
           is_default, inactive, jwks_file, jwks_url, oidc_issuer, issuer, audience, algorithms, leeway,
           principal_claim, command, url, timeout, as_json: bool) -> None:
    """Create a custom authorizer NAME (as AWS IoT's CreateAuthorizer)."""
    if policies and kind != "jwt":
        raise AuthorizerInputError("--policy is for --type jwt: a command authorizer returns its policy documents")
    config = _config(kind, jwks_file=jwks_file, jwks_url=jwks_url, oidc_issuer=oidc_issuer, issuer=issuer,
                     audience=audience, algorithms=algorithms, leeway=leeway, principal_claim=principal_claim,
                     command=command, url=url, timeout=timeout)
    a = app.registry().create_authorizer(name, kind, config=config, signing_disabled=signing_disabled,
                                         token_key_name=token_key_name, signing_keys=_signing_keys(signing_keys),
                                         status="INACTIVE" if inactive else "ACTIVE", policies=policies,
                                         default=is_default)
    if as_json:
        emit_json(authorizer_json(a))
        return
    console.print(f"authorizer {a.name} created ({a.kind}, {a.status}"
                  f"{', signing disabled' if a.signing_disabled else ''}{', default' if a.is_default else ''})")


@authorizer.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the authorizers."""
    rows = app.registry().list_authorizers()
    if as_json:
        emit_json([authorizer_json(a) for a in rows])
        return
    emit_table(None, ["name", "type", "status", "signing", "token key", "policies", "default"],
               [(a.name, a.kind, a.status, "disabled" if a.signing_disabled else "required", a.token_key_name,
                 ",".join(a.policies), "yes" if a.is_default else "") for a in rows])


@authorizer.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Describe one authorizer (as AWS IoT's DescribeAuthorizer)."""
    data = authorizer_json(app.registry().get_authorizer(name))
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key == "tokenSigningPublicKeys":
            value = ", ".join(value) or None
        console.print(f"{key}: {value}")


@authorizer.command("set-status")
@click.argument("name")
@click.argument("status", type=click.Choice(["ACTIVE", "INACTIVE"], case_sensitive=False))
@pass_app
def set_status(app: AppContext, name: str, status: str) -> None:
    """ACTIVE or INACTIVE (live sessions it authorized are closed within a second)."""
    a = app.registry().set_authorizer_status(name, status)
    console.print(f"authorizer {a.name} is {a.status}")


@authorizer.command("delete")
@click.argument("name")
@pass_app
def delete(app: AppContext, name: str) -> None:
    """Delete an authorizer (live sessions it authorized are closed within a second)."""
    app.registry().delete_authorizer(name)
    console.print(f"authorizer {name} deleted")


def _context(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuthorizerInputError(f"{option}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AuthorizerInputError(f"{option}: a JSON object is expected")
    return value


@authorizer.command("test")
@click.argument("name")
@click.option("--token", help="The token value.")
@click.option("--token-signature", help="The base64 token signature (x-amz-customauthorizer-signature).")
@click.option("--mqtt-context", metavar="JSON", help='{"username": ..., "password": BASE64, "clientId": ...}')
@click.option("--tls-context", metavar="JSON", help='{"serverName": ...}')
@click.option("--http-context", metavar="JSON", help='{"headers": {...}, "queryString": "?a=b"}')
@pass_app
def test(app: AppContext, name: str, token, token_signature, mqtt_context, tls_context, http_context) -> None:
    """Run an authorizer as a connection would (as AWS IoT's TestInvokeAuthorizer): prints its answer; exit 0 when
    authenticated, 1 when not (the reason on standard error)."""
    mqtt = _context(mqtt_context, "--mqtt-context")
    tls = _context(tls_context, "--tls-context")
    http = _context(http_context, "--http-context")
    password = mqtt.get("password")
    if password is not None:
        try:
            password = base64.b64decode(password, validate=True)
        except (binascii.Error, TypeError):
            raise AuthorizerInputError("--mqtt-context: password must be base64 (as AWS IoT's)") from None
    query = tuple((k, v) for k, _, v in (p.partition("=") for p in str(http.get("queryString", "")).lstrip("?")
                                          .split("&") if p))
    creds = Credentials(username=mqtt.get("username"), password=password, client_id=mqtt.get("clientId"),
                        server_name=tls.get("serverName"),
                        headers=tuple((str(k).lower(), str(v)) for k, v in (http.get("headers") or {}).items()),
                        query=query)
    registry = app.registry()
    a = registry.get_authorizer(name)
    view = AuthView(registry.snapshot(certificate_pem=False))
    authenticator = CustomAuthenticator()
    if token is not None or token_signature is not None:
        response = asyncio.run(authenticator.invoke(a, creds, view, token=token, signature=token_signature,
                                                    from_credentials=False))
    else:
        response = asyncio.run(authenticator.invoke(a, creds, view))
    emit_json(response.to_aws())
    if not response.is_authenticated:
        err_console.print(f"not authenticated ({response.key}): {response.reason}", soft_wrap=True)
    sys.stdout.flush()
    click.get_current_context().exit(0 if response.is_authenticated else 1)
