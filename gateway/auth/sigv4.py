"""AWS Signature Version 4, query-string form, for the MQTT-over-WebSocket upgrade request (pure: no I/O).

What a device sends (the AWS IoT Device SDK's ``websockets_with_default_aws_signing``, service
``iotdevicegateway``)::

    GET /mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261201%2Fus-east-1%2Fiotdevicegateway
        %2Faws4_request&X-Amz-Date=20261201T233531Z&X-Amz-SignedHeaders=connection%3Bhost
        [&X-Amz-Expires=N][&X-Amz-Security-Token=...]&X-Amz-Signature=<64 hex>

The canonical request follows AWS's rules: method, canonical URI, the query parameters other than
X-Amz-Signature URI-encoded (RFC 3986) and sorted, the signed headers lower-cased with trimmed values, the
signed-header list, the payload hash. AWS IoT's own twist: the session token is added to the URL *after*
signing (the SDK signs with ``omit_session_token``), so X-Amz-Security-Token is left out of the canonical query;
a signature that did include it (a generic presigner) is accepted too. The payload hash of a GET without body
is SHA-256 of nothing; ``UNSIGNED-PAYLOAD`` (what presigners use) is accepted as well. The signing key is derived
from the secret, the credential date, region and service, as AWS specifies; signatures are compared in constant
time. Time: the request date may be at most 5 minutes ahead of the gateway's clock and the signature is valid
for X-Amz-Expires seconds (at most 7 days) or, without it, 5 minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "iotdevicegateway"
MAX_SKEW = 300
MAX_EXPIRES = 7 * 24 * 3600
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_REQUIRED = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")


class SigV4Error(Exception):
    """A refused signature: ``key`` is the log and metric label, ``reason`` AWS-style text."""

    def __init__(self, key: str, reason: str, access_key_id: str | None = None) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason
        self.access_key_id = access_key_id


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRequest:
    """The SigV4 parameters of one request, parsed but not yet verified."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]  # every query parameter, percent-decoded, in order
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value)
    access_key_id: str
    amz_date: str
    signed_at: datetime
    scope: str  # date/region/service/aws4_request
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    session_token: str | None
    expires: int | None


def split_target(target: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``/path?a=b&c`` -> (path, ((a, b), (c, ''))), names and values percent-decoded ('+' stays '+')."""
    path, _, query = target.partition("?")
    params = []
    for part in query.split("&") if query else ():
        if not part:
            continue
        name, _, value = part.partition("=")
        params.append((unquote(name), unquote(value)))
    return path, tuple(params)


def has_signature(params: Iterable[tuple[str, str]]) -> bool:
    return any(name == "X-Amz-Signature" or name == "X-Amz-Algorithm" for name, _ in params)


def parse(method: str, target: str, headers: Iterable[tuple[str, str]]) -> SignedRequest:
    """The SigV4 fields of a request (raises SigV4Error naming what is missing or malformed)."""
    path, params = split_target(target)
    found: dict[str, str] = {}
    for name, value in params:
        if name in found and name.startswith("X-Amz-"):
            raise SigV4Error("signature_malformed", f"query parameter {name} appears more than once")
        found[name] = value
    missing = [n for n in _REQUIRED if n not in found]
    if missing:
        raise SigV4Error("signature_missing", f"the request is not signed: {', '.join(missing)} missing")
    if found["X-Amz-Algorithm"] != ALGORITHM:
        raise SigV4Error("signature_malformed", f"X-Amz-Algorithm {found['X-Amz-Algorithm']!r} is not {ALGORITHM}")
    credential = found["X-Amz-Credential"].split("/")
    if len(credential) != 5 or credential[4] != "aws4_request" or not credential[0]:
        raise SigV4Error("signature_malformed", "X-Amz-Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request")
    akid, scope_date, region, service, _ = credential
    amz_date = found["X-Amz-Date"]
    try:
        signed_at = datetime.strptime(amz_date, _DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise SigV4Error("signature_malformed", f"X-Amz-Date {amz_date!r} is not YYYYMMDDTHHMMSSZ", akid) from None
    if scope_date != amz_date[:8]:
        raise SigV4Error("signature_malformed",
                         f"credential date {scope_date} is not the date of X-Amz-Date {amz_date}", akid)
    expires = None
    if "X-Amz-Expires" in found:
        text = found["X-Amz-Expires"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_EXPIRES:
            raise SigV4Error("signature_malformed", f"X-Amz-Expires {text!r} must be 1..{MAX_EXPIRES} seconds", akid)
        expires = int(text)
    signed_headers = tuple(found["X-Amz-SignedHeaders"].split(";"))
    if "host" not in signed_headers or any(not h or h != h.lower() for h in signed_headers) \
            or list(signed_headers) != sorted(signed_headers):
        raise SigV4Error("signature_malformed",
                         "X-Amz-SignedHeaders must be sorted lower-case header names and include host", akid)
    header_list = tuple((str(k).lower(), str(v)) for k, v in headers)
    present = {k for k, _ in header_list}
    absent = [h for h in signed_headers if h not in present]
    if absent:
        raise SigV4Error("signature_malformed", f"signed header(s) {', '.join(absent)} not in the request", akid)
    signature = found["X-Amz-Signature"]
    if len(signature) != 64 or any(c not in "0123456789abcdef" for c in signature):
        raise SigV4Error("signature_malformed", "X-Amz-Signature is not 64 lower-case hex characters", akid)
    return SignedRequest(method.upper(), path, params, header_list, akid, amz_date, signed_at,
                         "/".join(credential[1:]), region, service, signed_headers, signature,
                         found.get("X-Amz-Security-Token"), expires)


# --------------------------------------------------------------------------------------------- canonical form

def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(params: Iterable[tuple[str, str]], *, include_token: bool) -> str:
    pairs = sorted((_encode(k), _encode(v)) for k, v in params
                   if k != "X-Amz-Signature" and (include_token or k != "X-Amz-Security-Token"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_headers(headers: Iterable[tuple[str, str]], signed: Sequence[str]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if name in signed:
            values.setdefault(name, []).append(" ".join(value.split()))
    return "".join(f"{name}:{','.join(values[name])}\n" for name in signed)


def canonical_uri(path: str) -> str:
    segments = [_encode(unquote(s)) for s in (path or "/").split("/")]
    return "/".join(segments) or "/"


def canonical_request(req: SignedRequest, *, include_token: bool, payload_hash: str = EMPTY_SHA256) -> str:
    return "\n".join((req.method, canonical_uri(req.path), canonical_query(req.params, include_token=include_token),
                      canonical_headers(req.headers, req.signed_headers), ";".join(req.signed_headers),
                      payload_hash))


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()))


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(("AWS4" + secret).encode("utf-8"), date.encode("ascii"), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------- verification

def check_scope(req: SignedRequest, region: str) -> None:
    if req.service != SERVICE:
        raise SigV4Error("signature_scope", f"credential scope names service {req.service!r}, not {SERVICE}",
                         req.access_key_id)
    if req.region != region:
        raise SigV4Error("signature_scope", f"credential scope names region {req.region!r}; this endpoint is "
                         f"{region}", req.access_key_id)


def check_time(req: SignedRequest, now: datetime) -> None:
    """AWS's window: not more than 5 minutes ahead; valid for X-Amz-Expires seconds, or 5 minutes."""
    fmt = _DATE_FORMAT
    if req.signed_at > now + timedelta(seconds=MAX_SKEW):
        raise SigV4Error("signature_not_yet_valid",
                         f"Signature not yet current: {req.amz_date} is still later than "
                         f"{(now + timedelta(seconds=MAX_SKEW)).strftime(fmt)} (now + 5 min.)", req.access_key_id)
    window = req.expires if req.expires is not None else MAX_SKEW
    if now > req.signed_at + timedelta(seconds=window):
        if req.expires is None:
            text = (f"Signature expired: {req.amz_date} is now earlier than "
                    f"{(now - timedelta(seconds=MAX_SKEW)).strftime(fmt)} (now - 5 min.)")
        else:
            text = f"Signature expired: {req.amz_date} plus X-Amz-Expires {req.expires} s is before now"
        raise SigV4Error("signature_expired", text, req.access_key_id)


def valid_until(req: SignedRequest) -> datetime:
    return req.signed_at + timedelta(seconds=req.expires if req.expires is not None else MAX_SKEW)


def verify(req: SignedRequest, secret: str) -> None:
    """The signature was made with ``secret`` (raises SigV4Error "signature_mismatch" otherwise)."""
    key = signing_key(secret, req.scope.split("/")[0], req.region, req.service)
    variants = [False, True] if req.session_token is not None else [False]
    for include_token in variants:
        for payload_hash in (EMPTY_SHA256, UNSIGNED_PAYLOAD):
            expected = _sign(key, string_to_sign(req.amz_date, req.scope,
                                                 canonical_request(req, include_token=include_token,
                                                                   payload_hash=payload_hash)))
            if hmac.compare_digest(expected, req.signature):
                return
    raise SigV4Error("signature_mismatch", "The request signature we calculated does not match the signature you "
                     "provided. Check your AWS Secret Access Key and signing method.", req.access_key_id)


# --------------------------------------------------------------------------------------------- signing

def presign(host: str, access_key_id: str, secret: str, region: str, now: datetime, *, path: str = "/mqtt",
            session_token: str | None = None, expires: int | None = None,
            extra_headers: Sequence[tuple[str, str]] = ()) -> str:
    """The signed request target (``/mqtt?...``) a device sends, as the AWS IoT Device SDK builds it: signed
    headers ``host`` plus ``extra_headers``, the session token appended after signing."""
    amz_date = now.astimezone(timezone.utc).strftime(_DATE_FORMAT)
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/aws4_request"
    headers = (("host", host),) + tuple((k.lower(), v) for k, v in extra_headers)
    signed = tuple(sorted({k for k, _ in headers}))
    params = [("X-Amz-Algorithm", ALGORITHM), ("X-Amz-Credential", f"{access_key_id}/{scope}"),
              ("X-Amz-Date", amz_date), ("X-Amz-SignedHeaders", ";".join(signed))]
    if expires is not None:
        params.append(("X-Amz-Expires", str(expires)))
    req = SignedRequest("GET", path, tuple(params), headers, access_key_id, amz_date,
                        now, scope, region, SERVICE, signed, "", None, expires)
    key = signing_key(secret, amz_date[:8], region, SERVICE)
    signature = _sign(key, string_to_sign(amz_date, scope, canonical_request(req, include_token=False)))
    if session_token is not None:
        params.append(("X-Amz-Security-Token", session_token))
    params.append(("X-Amz-Signature", signature))
    return path + "?" + "&".join(f"{_encode(k)}={_encode(v)}" for k, v in params)
