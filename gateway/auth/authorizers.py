"""Custom authorizers (AWS IoT's CreateAuthorizer): a token decides who connects and what it may do.

How a device names the authorizer and passes its token, as AWS IoT documents it and the AWS IoT Device SDK's
``direct_with_custom_authorizer`` sends it::

    MQTT CONNECT username   [user]?x-amz-customauthorizer-name=NAME&x-amz-customauthorizer-signature=SIG&KEY=TOKEN
    WebSocket upgrade       the same names as HTTP headers or query parameters of GET /mqtt
    MQTT CONNECT password   passed to the authorizer (base64 in its event)

``KEY`` is the authorizer's token key name. With signing enabled (the default) the token must come with
``x-amz-customauthorizer-signature``: base64 of an RSA SHA-256 signature of the token made with the private key
of one of the authorizer's token-signing public keys, checked before the authorizer runs (a refused signature
never reaches it). Without a name the endpoint's default authorizer is used, if there is one.

Two kinds decide:

* ``jwt`` - built in: the token (the token key's value, else the MQTT password) is a JWT checked with PyJWT
  against a JWKS (a file, a JWKS URL, or an OIDC issuer's discovery document): algorithm allow-list (asymmetric
  only), signature, ``iss``, ``aud``, ``exp``, ``nbf``/``iat`` with a leeway. The principal is one claim
  (``sub`` by default), the policies are the registry policies granted to the authorizer, and every claim is a
  policy variable ``${jwt:<claim>}``. disconnectAfterInSeconds is the time left until ``exp``.
* ``command`` - a program (JSON event on stdin, response on stdout) or an HTTP endpoint on loopback (POST of
  the event) answering in AWS's Lambda response shape: isAuthenticated, principalId, policyDocuments,
  disconnectAfterInSeconds, refreshAfterInSeconds; for teams that already have a Lambda's logic.

The answer becomes a Principal as a certificate does (compiled policies, policy variables): every PUBLISH,
SUBSCRIBE and delivery is then decided by the one policy path of the session.

Why PyJWT: it is the most used JWT library for Python, small and stable, verifies with the ``cryptography``
package the project already depends on, makes the caller list the accepted algorithms (no ``none``, no
algorithm confusion) and parses JWKS (``PyJWKSet``). joserfc covers more of JOSE (JWE, JWT encryption) that
an authorizer does not need.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.auth.view import AuthView, documents
from gateway.auth.x509 import AuthRefusal, Principal
from gateway.policy import Identity, PolicyDocument, PolicyError, compile_policies, parse_policy
from gateway.registry import Authorizer

NAME_PARAM = "x-amz-customauthorizer-name"
SIGNATURE_PARAM = "x-amz-customauthorizer-signature"
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256")
MAX_POLICY_DOCUMENTS = 10
MAX_POLICY_CHARS = 2048
MIN_SECONDS, MAX_SECONDS = 300, 86400
MAX_TOKEN = 8192
_PRINCIPAL_ID = re.compile(r"[a-zA-Z0-9]{1,128}")
JWKS_REFRESH_MIN = 60.0  # an unknown key id refetches the JWKS at most this often
JWKS_TTL = 3600.0


class AuthorizerConfigError(ValueError):
    """An authorizer's settings are not usable; the message names the field."""


# --------------------------------------------------------------------------------------------- what was sent

@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a connection presented to a custom authorizer: the inputs of AWS's authorizer event."""

    username: str | None = None
    password: bytes | None = None
    client_id: str | None = None
    server_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # WebSocket upgrade request, lower-case names
    query: tuple[tuple[str, str], ...] = ()  # WebSocket upgrade request query parameters
    source_ip: str | None = None

    @property
    def username_params(self) -> tuple[tuple[str, str], ...]:
        if not self.username or "?" not in self.username:
            return ()
        params = []
        for part in self.username.split("?", 1)[1].split("&"):
            name, sep, value = part.partition("=")
            if sep:
                params.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
        return tuple(params)

    def lookup(self, name: str) -> str | None:
        """A value by name: upgrade request header, then its query, then the CONNECT username's query."""
        low = name.lower()
        for key, value in self.headers:
            if key == low:
                return value
        for key, value in self.query + self.username_params:
            if key == name:
                return value
        return None

    @property
    def protocols(self) -> list[str]:
        return ["tls", "http", "mqtt"] if self.headers else ["tls", "mqtt"]

    def event(self, token: str | None, signature_verified: bool) -> dict:
        """AWS IoT's authorizer event (what a Lambda receives)."""
        data: dict[str, Any] = {"tls": {"serverName": self.server_name}} if self.server_name else {}
        if self.headers:
            query = "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}" for k, v in self.query)
            data["http"] = {"headers": dict(self.headers), "queryString": f"?{query}" if query else ""}
        mqtt: dict[str, Any] = {}
        if self.username is not None:
            mqtt["username"] = self.username
        if self.password is not None:
            mqtt["password"] = base64.b64encode(self.password).decode("ascii")
        if self.client_id:
            mqtt["clientId"] = self.client_id
        if mqtt:
            data["mqtt"] = mqtt
        event: dict[str, Any] = {"signatureVerified": signature_verified, "protocols": self.protocols,
                                 "protocolData": data, "connectionMetadata": {"id": str(uuid.uuid4())}}
        if token is not None:
            event["token"] = token
        return event


def wants_custom_auth(creds: Credentials) -> bool:
    return creds.lookup(NAME_PARAM) is not None


# --------------------------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True, slots=True)
class JwtSettings:
    jwks_file: str | None
    jwks_url: str | None
    oidc_issuer: str | None
    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...]
    leeway: int
    principal_claim: str


@dataclasses.dataclass(frozen=True, slots=True)
class CommandSettings:
    command: tuple[str, ...] | None
    url: str | None
    timeout: float


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise AuthorizerConfigError(f"{field} must be a URL")
    scheme = urllib.parse.urlsplit(value).scheme
    if scheme == "https" or (scheme == "http" and is_loopback_url(value)):
        return value
    raise AuthorizerConfigError(f"{field} {value!r}: https is required (plain http only on loopback)")


def parse_settings(kind: str, config: Mapping[str, Any]) -> JwtSettings | CommandSettings:
    """The checked settings of an authorizer kind (raises AuthorizerConfigError naming the field)."""
    config = dict(config)
    if kind == "jwt":
        known = {"jwks_file", "jwks_url", "oidc_issuer", "issuer", "audience", "algorithms", "leeway",
                 "principal_claim"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise AuthorizerConfigError(f"unknown jwt setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        sources = [k for k in ("jwks_file", "jwks_url", "oidc_issuer") if config.get(k)]
        if len(sources) != 1:
            raise AuthorizerConfigError("a jwt authorizer needs exactly one key source: jwks_file, jwks_url or "
                                        "oidc_issuer")
        jwks_file = config.get("jwks_file")
        if jwks_file is not None and not isinstance(jwks_file, str):
            raise AuthorizerConfigError("jwks_file must be a file path")
        jwks_url = _url(config["jwks_url"], "jwks_url") if config.get("jwks_url") else None
        oidc = _url(config["oidc_issuer"], "oidc_issuer").rstrip("/") if config.get("oidc_issuer") else None
        issuer = config.get("issuer") or oidc
        if not isinstance(issuer, str) or not issuer:
            raise AuthorizerConfigError("issuer is required: the iss claim every token must carry")
        audience = config.get("audience")
        audience = (audience,) if isinstance(audience, str) else tuple(audience or ())
        if not audience or not all(isinstance(a, str) and a for a in audience):
            raise AuthorizerConfigError("audience is required: the aud value(s) a token must be issued for")
        algorithms = tuple(config.get("algorithms") or DEFAULT_ALGORITHMS)
        bad = [a for a in algorithms if a not in ALGORITHMS]
        if bad:
            raise AuthorizerConfigError(f"algorithm {bad[0]!r} is not accepted; use asymmetric ones: "
                                        f"{', '.join(ALGORITHMS)}")
        leeway = config.get("leeway", 60)
        if isinstance(leeway, bool) or not isinstance(leeway, int) or not 0 <= leeway <= 300:
            raise AuthorizerConfigError("leeway must be 0..300 seconds of clock skew")
        claim = config.get("principal_claim", "sub")
        if not isinstance(claim, str) or not claim:
            raise AuthorizerConfigError("principal_claim must be a claim name")
        return JwtSettings(jwks_file, jwks_url, oidc, issuer, audience, algorithms, leeway, claim)
    if kind == "command":
        known = {"command", "url", "timeout"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise AuthorizerConfigError(f"unknown command setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        command, url = config.get("command"), config.get("url")
        if (command is None) == (url is None):
            raise AuthorizerConfigError("a command authorizer needs exactly one of command (argv) or url")
        if command is not None:
            if isinstance(command, str) or not command or not all(isinstance(a, str) and a for a in command):
                raise AuthorizerConfigError("command must be a non-empty list of arguments (argv)")
            command = tuple(command)
        if url is not None:
            if not isinstance(url, str) or not is_loopback_url(url) \
                    or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise AuthorizerConfigError(f"url {url!r}: the authorizer endpoint must be http(s) on loopback")
        timeout = config.get("timeout", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 30:
            raise AuthorizerConfigError("timeout must be 0..30 seconds")
        return CommandSettings(command, url, float(timeout))
    raise AuthorizerConfigError(f"authorizer type {kind!r} is not known: use jwt or command")


def load_signing_key(pem: str) -> rsa.RSAPublicKey:
    """A token-signing public key: RSA of at least 2048 bits (AWS IoT's rule)."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        raise AuthorizerConfigError("token signing key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise AuthorizerConfigError("token signing key must be an RSA public key of at least 2048 bits")
    return key


def verify_token_signature(token: str, signature: str, keys: Sequence[rsa.RSAPublicKey]) -> bool:
    try:
        raw = base64.b64decode(signature.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        return False
    for key in keys:
        try:
            key.verify(raw, token.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
            return True
        except InvalidSignature:
            continue
    return False


# --------------------------------------------------------------------------------------------- answers

@dataclasses.dataclass(frozen=True, slots=True)
class AuthorizerResponse:
    """An authorizer's answer in AWS's shape, plus what iotgate needs to act on it."""

    is_authenticated: bool
    principal_id: str | None = None
    policy_documents: tuple[str, ...] = ()
    disconnect_after: int | None = None
    refresh_after: int | None = None
    parsed: tuple[PolicyDocument, ...] = ()
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str = "authorized"  # why: the log label of a refusal
    reason: str = ""

    def to_aws(self) -> dict:
        """TestInvokeAuthorizer's response shape."""
        return {"isAuthenticated": self.is_authenticated, "principalId": self.principal_id,
                "policyDocuments": list(self.policy_documents),
                "refreshAfterInSeconds": self.refresh_after, "disconnectAfterInSeconds": self.disconnect_after}


def _denied(key: str, reason: str) -> AuthorizerResponse:
    return AuthorizerResponse(False, key=key, reason=reason)


def parse_response(data: Any, authorizer: str) -> AuthorizerResponse:
    """A command authorizer's JSON answer, checked as AWS IoT checks a Lambda's (invalid -> refused)."""
    def invalid(why: str) -> AuthorizerResponse:
        return _denied("authorizer_response_invalid", f"authorizer {authorizer!r} answered an invalid response: {why}")

    if not isinstance(data, Mapping):
        return invalid("not a JSON object")
    authenticated = data.get("isAuthenticated")
    if not isinstance(authenticated, bool):
        return invalid("isAuthenticated must be true or false")
    if not authenticated:
        return _denied("token_rejected", f"authorizer {authorizer!r} answered isAuthenticated: false")
    principal = data.get("principalId")
    if not isinstance(principal, str) or not _PRINCIPAL_ID.fullmatch(principal):
        return invalid("principalId must be 1 to 128 letters and digits")
    times = {}
    for field in ("disconnectAfterInSeconds", "refreshAfterInSeconds"):
        value = data.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_SECONDS <= value <= MAX_SECONDS:
            return invalid(f"{field} must be a whole number of seconds in {MIN_SECONDS}..{MAX_SECONDS}")
        times[field] = value
    raw_docs = data.get("policyDocuments")
    if not isinstance(raw_docs, list) or not 1 <= len(raw_docs) <= MAX_POLICY_DOCUMENTS:
        return invalid(f"policyDocuments must be a list of 1 to {MAX_POLICY_DOCUMENTS} policy documents")
    texts, parsed = [], []
    for i, doc in enumerate(raw_docs):
        text = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
        if len("".join(text.split())) > MAX_POLICY_CHARS:
            return invalid(f"policyDocuments[{i}] is longer than {MAX_POLICY_CHARS} characters")
        try:
            parsed.append(parse_policy(text, name=f"{authorizer}.policyDocuments[{i}]", version="1"))
        except PolicyError as exc:
            return invalid(f"policyDocuments[{i}]: {exc}")
        texts.append(text)
    return AuthorizerResponse(True, principal, tuple(texts), times["disconnectAfterInSeconds"],
                              times["refreshAfterInSeconds"], tuple(parsed))


# --------------------------------------------------------------------------------------------- JWKS

def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document (https; plain http only on loopback). Blocking: run it in a thread."""
    _url(url, "URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        return json.loads(response.read(1 << 20))


class JwksSource:
    """The verification keys of one jwt authorizer: a file (re-read when it changes) or a URL (cached)."""

    def __init__(self, settings: JwtSettings, *, fetch: Callable[[str], Any] = fetch_json,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._fetch = fetch
        self._clock = clock
        self._keys: jwt.PyJWKSet | None = None
        self._stamp: Any = None
        self._fetched = -1e18

    def _load(self) -> jwt.PyJWKSet:
        s = self.settings
        if s.jwks_file is not None:
            path = Path(s.jwks_file)
            stamp = path.stat().st_mtime_ns
            if self._keys is None or stamp != self._stamp:
                self._keys = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
                self._stamp = stamp
            return self._keys
        url = s.jwks_url
        if url is None:
            discovery = self._fetch(f"{s.oidc_issuer}/.well-known/openid-configuration")
            url = discovery.get("jwks_uri") if isinstance(discovery, Mapping) else None
            if not isinstance(url, str):
                raise ValueError(f"{s.oidc_issuer}: the OpenID configuration names no jwks_uri")
            _url(url, "jwks_uri")
        self._keys = jwt.PyJWKSet.from_dict(self._fetch(url))
        self._fetched = self._clock()
        return self._keys

    def keys(self, *, refresh: bool = False) -> jwt.PyJWKSet:
        """The key set; a URL source refetches after its TTL, or on ``refresh`` at most once a minute."""
        if self.settings.jwks_file is not None:
            return self._load()
        age = self._clock() - self._fetched
        if self._keys is None or age > JWKS_TTL or (refresh and age > JWKS_REFRESH_MIN):
            return self._load()
        return self._keys

    @property
    def remote(self) -> bool:
        return self.settings.jwks_file is None


def _pick_key(keys: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((k for k in keys.keys if k.key_id == kid), None)


_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidAudienceError, "token_audience"),
    (jwt.InvalidIssuerError, "token_issuer"),
    (jwt.MissingRequiredClaimError, "token_claims"),
    (jwt.exceptions.InvalidSubjectError, "token_claims"),
    (jwt.InvalidAlgorithmError, "token_algorithm"),
    (jwt.InvalidSignatureError, "token_signature"),
    (jwt.InvalidKeyError, "token_key"),
    (jwt.DecodeError, "token_malformed"),
)


def verify_jwt(token: str, settings: JwtSettings, keys: jwt.PyJWKSet, now: float) -> AuthorizerResponse | str:
    """The claims of a valid token as a response (policies added by the caller), a refusal, or "unknown kid"."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        return _denied("token_malformed", f"token is not a JWT: {exc}")
    alg = header.get("alg")
    if alg not in settings.algorithms:
        return _denied("token_algorithm", f"token algorithm {alg!r} is not accepted ({', '.join(settings.algorithms)})")
    kid = header.get("kid")
    key = _pick_key(keys, kid)
    if key is None:
        if kid is None:
            return _denied("token_key", f"token has no kid and the JWKS holds {len(keys.keys)} keys")
        return "unknown kid"
    try:
        # PyJWT checks signature, iss and aud; the times are checked below against the clock passed in.
        claims = jwt.decode(token, key.key, algorithms=list(settings.algorithms), audience=list(settings.audience),
                            issuer=settings.issuer, options={"require": ["exp", "iss", "aud"], "verify_exp": False,
                                                             "verify_nbf": False, "verify_iat": False})
    except jwt.PyJWTError as exc:
        kind = next((k for cls, k in _JWT_ERRORS if isinstance(exc, cls)), "token_invalid")
        return _denied(kind, f"token refused: {exc}")
    except (TypeError, ValueError) as exc:  # the JWKS key does not fit the token's algorithm
        return _denied("token_key", f"token refused: key {kid!r} cannot verify {alg}: {exc}")
    times = {}
    for claim in ("exp", "nbf", "iat"):
        value = claims.get(claim)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return _denied("token_claims", f"token claim {claim} must be a number (seconds since the epoch)")
        times[claim] = value
    skew = settings.leeway
    if now > times["exp"] + skew:
        return _denied("token_expired", f"token expired {int(now - times['exp'])} s ago (exp {int(times['exp'])}, "
                                        f"leeway {skew} s)")
    for claim in ("nbf", "iat"):
        if times[claim] is not None and times[claim] > now + skew:
            return _denied("token_not_yet_valid", f"token not valid yet: {claim} is {int(times[claim] - now)} s "
                                                  f"ahead (leeway {skew} s)")
    principal = claims.get(settings.principal_claim)
    if not isinstance(principal, str) or not 1 <= len(principal) <= 128:
        return _denied("token_claims", f"claim {settings.principal_claim!r} (the principal) must be a string of "
                                       "1 to 128 characters")
    left = int(claims["exp"] + settings.leeway - now)
    return AuthorizerResponse(True, principal, (), max(1, min(left, MAX_SECONDS)), MAX_SECONDS, claims=claims)


# --------------------------------------------------------------------------------------------- commands

async def run_command(argv: Sequence[str], event: dict, timeout: float) -> Any:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(event).encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(f"no answer within {timeout:g} s") from None
    if proc.returncode != 0:
        first = (err.decode("utf-8", "replace").strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"exit status {proc.returncode}{': ' + first if first else ''}")
    return json.loads(out)


def post_json(url: str, event: dict, timeout: float) -> Any:
    """POST the event to a loopback endpoint; blocking (run it in a thread)."""
    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback checked at create
        return json.loads(response.read(1 << 20))


# --------------------------------------------------------------------------------------------- authenticator

class CustomAuthenticator:
    """Runs custom authorizers and turns their answers into Principals (or refusals naming the authorizer)."""

    def __init__(self, *, region: str = "us-east-1", account: str = "123456789012",
                 clock: Callable[[], float] = time.time, fetch: Callable[[str], Any] = fetch_json) -> None:
        self.region = region
        self.account = account
        self.clock = clock
        self._fetch = fetch
        self._jwks: dict[str, tuple[JwtSettings, JwksSource]] = {}

    def resolve(self, creds: Credentials, view: AuthView) -> Authorizer | AuthRefusal:
        """The authorizer a connection names (or the default one), if it may be used."""
        name = creds.lookup(NAME_PARAM) or view.default_authorizer
        if name is None:
            return AuthRefusal(None, "authorizer_missing", "no client certificate and no custom authorizer named "
                               f"({NAME_PARAM}); no default authorizer is set")
        authorizer = view.authorizers.get(name)
        log = (("authorizer", name),)
        if authorizer is None:
            return AuthRefusal(None, "authorizer_unknown", f"authorizer {name!r} does not exist", log=log)
        if authorizer.status != "ACTIVE":
            return AuthRefusal(None, "authorizer_inactive", f"authorizer {name!r} is {authorizer.status}", log=log)
        return authorizer

    async def invoke(self, authorizer: Authorizer, creds: Credentials, view: AuthView, *,
                     token: str | None = None, signature: str | None = None,
                     from_credentials: bool = True) -> AuthorizerResponse:
        """Check the token signature, then run the authorizer: AWS's answer (``key``/``reason`` on refusal)."""
        name = authorizer.name
        if from_credentials:
            token = creds.lookup(authorizer.token_key_name) if authorizer.token_key_name else None
            signature = creds.lookup(SIGNATURE_PARAM)
        if token is not None and len(token) > MAX_TOKEN:
            return _denied("token_malformed", f"token longer than {MAX_TOKEN} characters")
        verified = False
        if not authorizer.signing_disabled:
            if not token:
                return _denied("token_missing", f"authorizer {name!r} requires a token in "
                                                f"{authorizer.token_key_name!r}")
            if not signature:
                return _denied("token_signature_missing", f"authorizer {name!r} requires a token signature "
                                                          f"({SIGNATURE_PARAM})")
            try:
                keys = [load_signing_key(pem) for pem in authorizer.signing_keys.values()]
            except AuthorizerConfigError as exc:
                return _denied("authorizer_misconfigured", f"authorizer {name!r}: {exc}")
            if not verify_token_signature(token, signature, keys):
                return _denied("token_signature_invalid", f"the token signature does not verify with authorizer "
                                                          f"{name!r}'s token signing keys")
            verified = True
        try:
            settings = parse_settings(authorizer.kind, authorizer.config)
        except AuthorizerConfigError as exc:
            return _denied("authorizer_misconfigured", f"authorizer {name!r}: {exc}")
        if isinstance(settings, JwtSettings):
            return await self._jwt(authorizer, settings, token, creds, view)
        return await self._command(authorizer, settings, creds.event(token, verified))

    async def _jwt(self, authorizer: Authorizer, settings: JwtSettings, token: str | None, creds: Credentials,
                   view: AuthView) -> AuthorizerResponse:
        if not token and creds.password:
            try:
                token = creds.password.decode("ascii")
            except UnicodeDecodeError:
                token = None
        if not token:
            return _denied("token_missing", f"authorizer {authorizer.name!r}: no token (give it in "
                                            f"{authorizer.token_key_name or 'the token key'} or the MQTT password)")
        entry = self._jwks.get(authorizer.name)
        if entry is None or entry[0] != settings:
            entry = (settings, JwksSource(settings, fetch=self._fetch))
            self._jwks[authorizer.name] = entry
        source = entry[1]
        result: AuthorizerResponse | str = "unknown kid"
        for refresh in (False, True):
            try:
                keys = await asyncio.to_thread(source.keys, refresh=refresh) if source.remote \
                    else source.keys(refresh=refresh)
            except Exception as exc:  # noqa: BLE001 - an unreachable or broken JWKS refuses, never allows
                return _denied("authorizer_unavailable", f"authorizer {authorizer.name!r}: JWKS not available: "
                                                         f"{type(exc).__name__}: {exc}")
            result = verify_jwt(token, settings, keys, self.clock())
            if result != "unknown kid" or not source.remote:
                break
        if isinstance(result, str):
            return _denied("token_key", "token key id is not in the authorizer's JWKS")
        if not result.is_authenticated:
            return result
        docs, problems = documents(view, authorizer.policies)
        if problems:
            return _denied("policy_invalid", "; ".join(problems))
        return dataclasses.replace(result, policy_documents=tuple(d.text for d in docs), parsed=tuple(docs))

    async def _command(self, authorizer: Authorizer, settings: CommandSettings, event: dict) -> AuthorizerResponse:
        try:
            if settings.command is not None:
                data = await run_command(settings.command, event, settings.timeout)
            else:
                data = await asyncio.wait_for(asyncio.to_thread(post_json, settings.url, event, settings.timeout),
                                              settings.timeout + 1)
        except Exception as exc:  # noqa: BLE001 - a failing authorizer refuses the connection (AWS: terminated)
            text = str(exc) or type(exc).__name__
            return _denied("authorizer_failed", f"authorizer {authorizer.name!r} failed: {text}")
        return parse_response(data, authorizer.name)

    def principal(self, authorizer: Authorizer, response: AuthorizerResponse, view: AuthView
                  ) -> Principal | AuthRefusal:
        log = (("authorizer", authorizer.name),)
        if not response.is_authenticated:
            return AuthRefusal(None, response.key, response.reason, log=log)
        log += (("principal", response.principal_id),)
        identity = Identity(claims=response.claims)
        compiled = compile_policies(response.parsed, identity, self.region, self.account)
        return Principal(None, None, (), compiled, view.authorizer_state(authorizer.name), kind="authorizer",
                         log=log, disconnect_after=response.disconnect_after, refresh_after=response.refresh_after)

    async def authenticate(self, creds: Credentials, view: AuthView) -> Principal | AuthRefusal:
        authorizer = self.resolve(creds, view)
        if isinstance(authorizer, AuthRefusal):
            return authorizer
        response = await self.invoke(authorizer, creds, view)
        return self.principal(authorizer, response, view)


__all__ = ["AuthorizerConfigError", "AuthorizerResponse", "Credentials", "CustomAuthenticator", "JwksSource",
           "JwtSettings", "CommandSettings", "NAME_PARAM", "SIGNATURE_PARAM", "parse_response", "parse_settings",
           "verify_jwt", "wants_custom_auth"]
