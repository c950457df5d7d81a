"""Device Shadow, classic and named, as AWS IoT's Device Shadow service documents it: a pure core.

Documents in, documents out: no I/O, no clock (``now`` is epoch seconds, passed in). The service shell
(``ShadowService``) reads the stored shadow, calls ``update`` / ``get`` / ``delete`` and stores what they
return, in one registry transaction.

A stored shadow is a ``Shadow``: ``desired`` / ``reported`` (JSON objects or None), their ``metadata`` mirrors
(every leaf a ``{"timestamp": t}``, arrays one per element), and ``version``. A deleted shadow keeps its
version (a new one continues from it, as AWS does within 48 hours) with ``exists=False``.

Rules (AWS IoT developer guide, "Device Shadow service documents" and "error messages"):
- an update merges: a key set to null is removed, objects merge, arrays and scalars are replaced; a section
  set to null is removed; an object left empty by removals is removed;
- ``version`` in a request must equal the stored version, else 409 "Version conflict"; every accepted update
  adds one;
- ``delta`` is every desired key whose value differs from reported (objects compared key by key);
  ``/update/delta`` carries the part of the delta this request's desired section touched;
- payload at most 8 KiB (413), ``clientToken`` at most 64 bytes, state nested at most 6 levels (400).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

MAX_DOCUMENT_BYTES = 8 * 1024
MAX_CLIENT_TOKEN_BYTES = 64
MAX_DEPTH = 6

MESSAGES = {
    "invalid_json": (400, "Invalid JSON"),
    "missing_state": (400, "Missing required node: state"),
    "state_object": (400, "State node must be an object"),
    "desired_object": (400, "Desired node must be an object"),
    "reported_object": (400, "Reported node must be an object"),
    "invalid_version": (400, "Invalid version"),
    "invalid_token": (400, "Invalid clientToken"),
    "too_deep": (400, f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"),
    "invalid_node": (400, "State contains an invalid node"),
    "forbidden": (403, "Forbidden"),
    "not_found": (404, "Thing not found"),
    "conflict": (409, "Version conflict"),
    "too_large": (413, "The payload exceeds the maximum size allowed"),
    "encoding": (415, "Unsupported documented encoding; supported encoding is UTF-8"),
    "throttled": (429, "Too Many Requests"),
    "internal": (500, "Internal service failure"),
}


class ShadowError(Exception):
    """A refusal: ``code`` and ``message`` as AWS puts them in ``/rejected``."""

    def __init__(self, key: str, *, message: str | None = None, client_token: str | None = None) -> None:
        code, text = MESSAGES.get(key, (400, key))
        super().__init__(message or text)
        self.code = code
        self.message = message or text
        self.client_token = client_token


@dataclasses.dataclass(frozen=True, slots=True)
class Shadow:
    desired: dict | None = None
    reported: dict | None = None
    meta_desired: dict | None = None
    meta_reported: dict | None = None
    version: int = 0
    exists: bool = False

    def document(self, now: int, client_token: str | None = None) -> dict:
        """The ``/get/accepted`` document."""
        state: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if self.desired is not None:
            state["desired"] = self.desired
            metadata["desired"] = self.meta_desired or {}
        if self.reported is not None:
            state["reported"] = self.reported
            metadata["reported"] = self.meta_reported or {}
        d = delta(self.desired, self.reported)
        if d:
            state["delta"] = d
        return _with_token({"state": state, "metadata": metadata, "version": self.version, "timestamp": now},
                           client_token)

    def state_only(self) -> dict:
        """``{"state": {desired, reported}, "metadata": ..., "version"}``: one side of ``/update/documents``."""
        state: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if self.desired is not None:
            state["desired"] = self.desired
            metadata["desired"] = self.meta_desired or {}
        if self.reported is not None:
            state["reported"] = self.reported
            metadata["reported"] = self.meta_reported or {}
        return {"state": state, "metadata": metadata, "version": self.version}


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What an operation did: the shadow to store (None: unchanged) and the messages, by topic suffix
    (``accepted``, ``delta``, ``documents``; ``rejected`` on refusal)."""

    shadow: Shadow | None
    messages: tuple[tuple[str, dict], ...]


def _with_token(doc: dict, client_token: str | None) -> dict:
    if client_token is not None:
        doc["clientToken"] = client_token
    return doc


def rejected(error: ShadowError, now: int) -> dict:
    return _with_token({"code": error.code, "message": error.message, "timestamp": now}, error.client_token)


# --------------------------------------------------------------------------------------------- parsing

def parse_request(payload: bytes, *, require_state: bool) -> tuple[dict, str | None]:
    """The request object and its clientToken; raises ShadowError for what AWS refuses."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise ShadowError("too_large")
    if not payload.strip():
        if require_state:
            raise ShadowError("invalid_json")
        return {}, None
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError("encoding") from None
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ShadowError("invalid_json") from None
    if not isinstance(request, dict):
        raise ShadowError("invalid_json")
    token = request.get("clientToken")
    if token is not None and (not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES):
        raise ShadowError("invalid_token")
    return request, token


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _version(request: dict, token: str | None) -> int | None:
    if "version" not in request:
        return None
    version = request["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ShadowError("invalid_version", client_token=token)
    return version


# --------------------------------------------------------------------------------------------- merge, delta

def merge(target: dict | None, patch: dict) -> dict | None:
    """``patch`` merged into a copy of ``target``: null removes, objects merge, anything else replaces.
    An object emptied by removals is removed; None when nothing is left."""
    out = dict(target or {})
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            old = out.get(key)
            merged = merge(old if isinstance(old, dict) else None, value)
            if merged is None and value:
                out.pop(key, None)  # emptied by removals
            else:
                out[key] = merged if merged is not None else {}
        else:
            out[key] = value
    return out or None


def stamp(patch: Any, now: int) -> Any:
    """The metadata of ``patch``: objects mirrored, every leaf (array elements too) ``{"timestamp": now}``."""
    if isinstance(patch, dict):
        return {k: (None if v is None else stamp(v, now)) for k, v in patch.items()}
    if isinstance(patch, list):
        return [stamp(v, now) for v in patch]
    return {"timestamp": now}


def merge_metadata(target: dict | None, patch: dict, now: int) -> dict | None:
    out = dict(target or {})
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            old = out.get(key)
            merged = merge_metadata(old if isinstance(old, dict) and "timestamp" not in old else None, value, now)
            if merged is None and value:
                out.pop(key, None)
            else:
                out[key] = merged if merged is not None else {}
        else:
            out[key] = stamp(value, now)
    return out or None


def delta(desired: dict | None, reported: dict | None) -> dict | None:
    """Every desired key whose value is not what is reported (objects compared key by key)."""
    if not desired:
        return None
    reported = reported or {}
    out = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = delta(want, have)
            if sub:
                out[key] = sub
        elif want != have:
            out[key] = want
    return out or None


def _restrict(d: dict | None, keys: dict) -> dict | None:
    """The part of delta ``d`` under the keys of ``keys`` (a request's desired section)."""
    if not d:
        return None
    out = {}
    for key, sub in keys.items():
        if key not in d:
            continue
        if isinstance(sub, dict) and isinstance(d[key], dict) and sub:
            part = _restrict(d[key], sub)
            if part:
                out[key] = part
        else:
            out[key] = d[key]
    return out or None


def _pick(meta: dict | None, keys: dict | None) -> dict:
    """The metadata mirror of the keys of ``keys``."""
    if not meta or not keys:
        return {}
    out = {}
    for key, sub in keys.items():
        if key not in meta:
            continue
        if isinstance(sub, dict) and isinstance(meta[key], dict) and "timestamp" not in meta[key]:
            out[key] = _pick(meta[key], sub)
        else:
            out[key] = meta[key]
    return out


_MISSING = object()


# --------------------------------------------------------------------------------------------- operations

def update(current: Shadow, payload: bytes, now: int) -> Outcome:
    try:
        request, token = parse_request(payload, require_state=True)
    except ShadowError as exc:
        return Outcome(None, (("rejected", rejected(exc, now)),))
    try:
        new, accepted, delta_msg = _update(current, request, token, now)
    except ShadowError as exc:
        exc.client_token = token
        return Outcome(None, (("rejected", rejected(exc, now)),))
    messages: list[tuple[str, dict]] = [("accepted", accepted)]
    if delta_msg is not None:
        messages.append(("delta", delta_msg))
    documents = {"previous": current.state_only() if current.exists else None, "current": new.state_only(),
                 "timestamp": now}
    if documents["previous"] is None:
        del documents["previous"]
    messages.append(("documents", _with_token(documents, token)))
    return Outcome(new, tuple(messages))


def _update(current: Shadow, request: dict, token: str | None, now: int) -> tuple[Shadow, dict, dict | None]:
    if "state" not in request:
        raise ShadowError("missing_state")
    state = request["state"]
    if not isinstance(state, dict):
        raise ShadowError("state_object")
    version = _version(request, token)
    for key in state:
        if key not in ("desired", "reported"):
            raise ShadowError("invalid_node")
    desired_patch = state.get("desired", _MISSING)
    reported_patch = state.get("reported", _MISSING)
    if desired_patch is not _MISSING and desired_patch is not None and not isinstance(desired_patch, dict):
        raise ShadowError("desired_object")
    if reported_patch is not _MISSING and reported_patch is not None and not isinstance(reported_patch, dict):
        raise ShadowError("reported_object")
    for section in (desired_patch, reported_patch):
        if isinstance(section, dict) and _depth(section) > MAX_DEPTH:
            raise ShadowError("too_deep")
    if version is not None and current.exists and version != current.version:
        raise ShadowError("conflict")

    desired, meta_d = current.desired, current.meta_desired
    reported, meta_r = current.reported, current.meta_reported
    if desired_patch is None:
        desired = meta_d = None
    elif desired_patch is not _MISSING:
        desired = merge(desired, desired_patch)
        meta_d = merge_metadata(meta_d, desired_patch, now) if desired is not None else None
    if reported_patch is None:
        reported = meta_r = None
    elif reported_patch is not _MISSING:
        reported = merge(reported, reported_patch)
        meta_r = merge_metadata(meta_r, reported_patch, now) if reported is not None else None
    size = len(orjson.dumps({"desired": desired, "reported": reported}))
    if size > MAX_DOCUMENT_BYTES:
        raise ShadowError("too_large")
    new = Shadow(desired, reported, meta_d, meta_r, current.version + 1, True)

    metadata: dict[str, Any] = {}
    if isinstance(desired_patch, dict):
        metadata["desired"] = stamp(desired_patch, now)
    if isinstance(reported_patch, dict):
        metadata["reported"] = stamp(reported_patch, now)
    accepted = _with_token({"state": state, "metadata": metadata, "version": new.version, "timestamp": now}, token)

    delta_msg = None
    if isinstance(desired_patch, dict):
        part = _restrict(delta(desired, reported), desired_patch)
        if part:
            delta_msg = _with_token({"version": new.version, "timestamp": now, "state": part,
                                     "metadata": _pick(meta_d, part)}, token)
    return new, accepted, delta_msg


def get(current: Shadow, payload: bytes, now: int, name: str = "") -> Outcome:
    """``name``: the shadow's name (the thing's for a classic shadow), for the 404 message."""
    try:
        _, token = parse_request(payload, require_state=False)
    except ShadowError as exc:
        return Outcome(None, (("rejected", rejected(exc, now)),))
    if not current.exists:
        missing = ShadowError("not_found", message=_missing(name), client_token=token)
        return Outcome(None, (("rejected", rejected(missing, now)),))
    return Outcome(None, (("accepted", current.document(now, token)),))


def delete(current: Shadow, payload: bytes, now: int, name: str = "") -> Outcome:
    try:
        request, token = parse_request(payload, require_state=False)
        version = _version(request, token)
    except ShadowError as exc:
        return Outcome(None, (("rejected", rejected(exc, now)),))
    if not current.exists:
        missing = ShadowError("not_found", message=_missing(name), client_token=token)
        return Outcome(None, (("rejected", rejected(missing, now)),))
    if version is not None and version != current.version:
        return Outcome(None, (("rejected", rejected(ShadowError("conflict", client_token=token), now)),))
    gone = Shadow(version=current.version, exists=False)
    return Outcome(gone, (("accepted", _with_token({"version": current.version, "timestamp": now}, token)),))


def _missing(name: str) -> str:
    return f"No shadow exists with name: '{name}'"
