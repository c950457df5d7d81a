"""SigV4 authentication of a WebSocket upgrade with access keys iotgate issued (``iotgate identity create-key``).

The parsed, time-checked request (``gateway.auth.sigv4``) is matched to an access key of the registry view:
ACTIVE, not expired, the session token of a temporary key (an AKIA key takes none), the signature recomputed
with the key's secret (opened from its sealed form with the home's key-encryption key). A signature is accepted
once: a replay within its validity window is refused (``ReplayCache``). The key's policies become a Principal
as a certificate's do.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from gateway.auth import sigv4
from gateway.auth.secrets import SecretBox, SecretError, token_matches
from gateway.auth.view import AuthView, documents
from gateway.auth.x509 import AuthRefusal, Principal
from gateway.policy import Identity, compile_policies

INVALID_TOKEN = "The security token included in the request is invalid."


class ReplayCache:
    """Signatures seen and still valid; bounded (the oldest entry goes when full, and is logged as a limit).

    With ``directory`` (set by ``gateway run --workers N``), the worker processes of one node share what they
    have seen: each first use creates a file named by the signature's hash with ``O_CREAT | O_EXCL``, which
    exactly one process wins; the file holds the signature's end of validity and expired files are swept.
    """

    SWEEP_INTERVAL = 30.0

    def __init__(self, max_entries: int = 100_000, directory: Path | None = None) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0
        self.directory = directory
        self._swept = 0.0
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def first_use(self, signature: str, valid_until: float, now: float) -> bool:
        seen = self._seen
        while seen:
            oldest, until = next(iter(seen.items()))
            if until >= now:
                break
            del seen[oldest]
        if signature in seen:
            return False
        if self.directory is not None and not self._claim(signature, valid_until, now):
            return False
        if len(seen) >= self.max_entries:
            seen.popitem(last=False)
            self.evicted += 1
        seen[signature] = valid_until
        return True

    def _claim(self, signature: str, valid_until: float, now: float) -> bool:
        if now - self._swept >= self.SWEEP_INTERVAL:
            self._swept = now
            self._sweep(now)
        path = self.directory / hashlib.sha256(signature.encode()).hexdigest()
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if _until(path) >= now:
                    return False  # another worker saw it first and it is still valid
                path.unlink(missing_ok=True)  # an expired entry: the name is free again
                continue
            with os.fdopen(fd, "w") as f:
                f.write(repr(valid_until))
            return True
        return False

    def _sweep(self, now: float) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            until = _until(Path(entry.path))
            if until < now or (until == float("inf") and _mtime(entry) < now - 60):  # expired, or a torn write
                Path(entry.path).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._seen)


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _until(path: Path) -> float:
    """A shared entry's end of validity; one being written (empty) counts as valid for now."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return float("-inf")
    try:
        return float(text) if text else float("inf")
    except ValueError:
        return float("-inf")


class SigV4Authenticator:
    """Who signed a WebSocket upgrade request, under a registry view."""

    def __init__(self, home: Path | None, *, region: str = "us-east-1", account: str = "123456789012",
                 clock: Callable[[], float] = time.time, box: SecretBox | None = None,
                 replay: ReplayCache | None = None) -> None:
        self.home = home
        self.region = region
        self.account = account
        self.clock = clock
        self._box = box
        self.replay = replay if replay is not None else ReplayCache()  # an empty cache is falsy (len 0)

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            if self.home is None:
                raise SecretError("no iotgate home, so no key-encryption key")
            self._box = SecretBox.load(self.home)
        return self._box

    def authenticate(self, method: str, target: str, headers: Iterable[tuple[str, str]],
                     view: AuthView) -> Principal | AuthRefusal:
        now_ts = self.clock()
        now = datetime.fromtimestamp(now_ts, timezone.utc)
        try:
            req = sigv4.parse(method, target, headers)
        except sigv4.SigV4Error as exc:
            return _refusal(exc)
        akid = req.access_key_id
        log = (("access_key", akid),)
        try:
            sigv4.check_scope(req, self.region)
            sigv4.check_time(req, now)
        except sigv4.SigV4Error as exc:
            return _refusal(exc)
        key = view.access_keys.get(akid)
        if key is None:
            return AuthRefusal(None, "access_key_unknown", f"{INVALID_TOKEN} (access key {akid} is not issued here)",
                               log=log)
        log += (("principal", key.identity),)
        if key.status != "ACTIVE":
            return AuthRefusal(None, "access_key_inactive", f"access key {akid} is {key.status}", log=log)
        if key.expires_at is not None and now >= key.expires_at:
            return AuthRefusal(None, "access_key_expired", f"The security token included in the request is expired "
                               f"(access key {akid} expired {key.expires_at.isoformat()})", log=log)
        if key.session_token_sha256 is None:
            if req.session_token is not None:
                return AuthRefusal(None, "session_token_invalid", f"{INVALID_TOKEN} (access key {akid} is a long-term "
                                   "key: it takes no session token)", log=log)
        elif req.session_token is None:
            return AuthRefusal(None, "session_token_missing", f"access key {akid} is temporary: X-Amz-Security-Token "
                               "is required", log=log)
        elif not token_matches(req.session_token, key.session_token_sha256):
            return AuthRefusal(None, "session_token_invalid", f"{INVALID_TOKEN} (not the session token of {akid})",
                               log=log)
        try:
            secret = self._secret_box().open(akid, key.sealed_secret)
        except SecretError as exc:
            return AuthRefusal(None, "access_key_unusable", str(exc), log=log)
        try:
            sigv4.verify(req, secret)
        except sigv4.SigV4Error as exc:
            return AuthRefusal(None, exc.key, exc.reason, log=log)
        if not self.replay.first_use(req.signature, sigv4.valid_until(req).timestamp(), now_ts):
            return AuthRefusal(None, "signature_replayed", "this signature was already used to connect; sign each "
                               "connection anew", log=log)
        docs, problems = documents(view, key.policies)
        if problems:
            return AuthRefusal(None, "policy_invalid", "; ".join(problems), log=log)
        compiled = compile_policies(docs, Identity(), self.region, self.account)
        left = None if key.expires_at is None else max(1.0, (key.expires_at - now).total_seconds())
        return Principal(None, None, (), compiled, view.key_state(akid), kind="sigv4", log=log,
                         disconnect_after=left)

    def reevaluate(self, access_key_id: str, view: AuthView) -> Principal | AuthRefusal:
        """A live session's key after a registry change: status, expiry and policies (the signature stands)."""
        log = (("access_key", access_key_id),)
        key = view.access_keys.get(access_key_id)
        if key is None:
            return AuthRefusal(None, "access_key_deleted", f"access key {access_key_id} was deleted", log=log)
        log += (("principal", key.identity),)
        if key.status != "ACTIVE":
            return AuthRefusal(None, "access_key_inactive", f"access key {access_key_id} is {key.status}", log=log)
        docs, problems = documents(view, key.policies)
        if problems:
            return AuthRefusal(None, "policy_invalid", "; ".join(problems), log=log)
        compiled = compile_policies(docs, Identity(), self.region, self.account)
        return Principal(None, None, (), compiled, view.key_state(access_key_id), kind="sigv4", log=log)


def _refusal(exc: sigv4.SigV4Error) -> AuthRefusal:
    log = (("access_key", exc.access_key_id),) if exc.access_key_id else ()
    return AuthRefusal(None, exc.key, exc.reason, log=log)
