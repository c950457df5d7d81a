"""The gateway's event-loop shell: listener, TLS, timers, upstream connections, registry refresh, drain.

Everything protocol-related happens in gateway.session (sans-IO); this module moves bytes and time:

    accept loop (one task)  ->  per connection: one task that runs the TLS handshake through the transport
                                seam (gateway.auth.tls), opens the upstream when the session asks, and waits
                                for the end; packets are handled in protocol callbacks (no task per packet)
    registry watcher (one task, gateway.watch) reads the change log in a worker thread, builds the next view
                                there and applies it on the loop: TLS trust rebuilt when the CA set changed,
                                live sessions of changed certificates closed or re-evaluated
    stats writer / metrics endpoint

With ``token_port`` a second listener serves devices without client certificates, as AWS IoT's port 443 does:
ALPN ``mqtt`` is MQTT whose CONNECT names a custom authorizer; anything else is MQTT over WebSocket on /mqtt,
authenticated at the upgrade (SigV4 query string, or custom-authorizer headers) or by the CONNECT's username.
Authentication ends in the same Principal a certificate gives, before the Session is built; from there the
connection is handled exactly as an mTLS one.

A failure inside one connection (a bug, a malformed packet, an abrupt close) ends that connection only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import itertools
import os
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.keys import write_file
from certs.store import PASSPHRASE_ENV, PKIPaths, PKIStore
from gateway.auth import (
    AuthRefusal,
    AuthView,
    HandshakeFailed,
    Principal,
    TLSAcceptor,
    X509Authenticator,
    empty_view,
)
from gateway.auth import sigv4
from gateway.auth.access_keys import ReplayCache, SigV4Authenticator
from gateway.auth.authorizers import NAME_PARAM, Credentials, CustomAuthenticator
from gateway.auth.tls import DEVICE_ALPN, TOKEN_ALPN, make_acceptor
from gateway.config import GatewayConfig
from gateway.mqtt import Framer, MQTTProtocolError, PacketType, decode
from gateway.observe import AccessLog, Metrics
from gateway.observe.http import start_metrics_server
from gateway.provisioning import jit
from gateway.registry import Registry
from gateway.registry.changes import ChangeSet
from gateway.services.base import Caller
from gateway.services.runtime import ServiceHub
from gateway.session import Close, Peer, RateLimiter, ServiceRequest, Session, State
from gateway.upstream.link import UpstreamConnector, parse_upstream_url
from gateway.proxy_accept import ProxyAcceptor
from gateway.proxy_protocol import ProxyProtocolError
from gateway.watch import RegistryWatcher
from gateway.websocket import UpgradeError, WebSocketServer, WebSocketTransport

CLOSE_GRACE = 2.0  # seconds a closing device may take to read its last packets before it is aborted
# Refusals of a certificate that an auto-registration CA may register or provision just in time
_CONNECTION_SERIALS = itertools.count(1)

JIT_KEYS = frozenset({"certificate_not_registered", "certificate_pending_activation"})

# The device transport pauses the gateway's reading of that device above this many buffered bytes (uvloop's TLS
# default is 512 KiB): with one read's worth of answers on top, a slow device stays well below max_device_buffer.
DEVICE_WRITE_HIGH_WATER = 64 * 1024
ACCEPT_BACKOFF = 0.05  # first pause before the accept loop restarts after an unexpected error; doubles
ACCEPT_BACKOFF_MAX = 1.0


class SessionDirectory:
    """Which connection holds which client id (in this process).

    ``claim`` returns the previous holder, which the caller closes (AWS IoT: the new connection wins). A
    shared registry of several gateway nodes would call ``remote_claim`` when another node took a client id.
    """

    def __init__(self) -> None:
        self._holders: dict[str, Connection] = {}

    def claim(self, client_id: str, conn: Connection) -> Connection | None:
        old = self._holders.get(client_id)
        self._holders[client_id] = conn
        return old if old is not conn else None

    def release(self, client_id: str, conn: Connection) -> None:
        if self._holders.get(client_id) is conn:
            del self._holders[client_id]

    def remote_claim(self, client_id: str) -> None:
        old = self._holders.pop(client_id, None)
        if old is not None:
            old.take_over()

    def get(self, client_id: str) -> Connection | None:
        return self._holders.get(client_id)

    def __len__(self) -> int:
        return len(self._holders)


class _DeviceProtocol(asyncio.Protocol):
    __slots__ = ("conn", "early", "transport", "ws", "arrived")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.early: list[bytes] | None = []  # bytes that arrive before the session exists
        self.transport = None
        self.ws: WebSocketServer | None = None  # MQTT over WebSocket: frames are unwrapped here
        self.arrived: asyncio.Event | None = None  # set when early bytes arrive (token authentication waits on it)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is not None:
            data, reply = ws.receive(data)
            if reply and not self.transport.is_closing():
                self.transport.write(reply)
            if ws.closed and not self.transport.is_closing():
                self.transport.close()
            if not data:
                return
        if self.early is not None:
            self.early.append(data)
            if self.arrived is not None:
                self.arrived.set()
        else:
            self.conn.device_data(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self.arrived is not None:
            self.arrived.set()
        self.conn.device_closed(exc)

    def pause_writing(self) -> None:
        self.conn.backpressure(device_full=True)

    def resume_writing(self) -> None:
        self.conn.backpressure(device_full=False)


class _UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.conn.upstream_closed(exc)

    def pause_writing(self) -> None:
        self.conn.backpressure(upstream_full=True)

    def resume_writing(self) -> None:
        self.conn.backpressure(upstream_full=False)


class Connection:
    """The shell around one Session: its two transports, its timers, and the effects of ``session.out``."""

    __slots__ = ("gw", "loop", "addr", "session", "device", "device_protocol", "upstream", "der", "certificate_id",
                 "client_id", "done", "want_upstream", "last_up_tx", "_timer", "_abort_timer", "_active",
                 "_device_full", "_upstream_full", "_reading_paused", "principal_key", "creds", "_auth_timers",
                 "_disconnect_at", "serial", "secured_at")

    def __init__(self, gateway: Gateway, addr: tuple) -> None:
        self.serial = next(_CONNECTION_SERIALS)  # never reused (id() is): addresses a service's private answer
        self.secured_at: float | None = None  # loop time the device's TLS handshake completed
        self.gw = gateway
        self.loop = gateway.loop
        self.addr = addr
        self.session: Session | None = None
        self.device = None
        self.device_protocol = _DeviceProtocol(self)
        self.upstream = None
        self.der: bytes = b""
        self.certificate_id: str | None = None
        self.client_id: str | None = None
        self.done = self.loop.create_future()
        self.want_upstream = self.loop.create_future()
        self.last_up_tx = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._active = False
        self._device_full = False
        self._upstream_full = False
        self._reading_paused = False
        self.principal_key: str | None = None  # "authorizer:NAME" / "key:AKID": token principals only
        self.creds: Credentials | None = None  # what a custom authorizer was given (for refreshes)
        self._auth_timers: list[asyncio.TimerHandle] = []
        self._disconnect_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, session: Session, transport) -> None:
        self.session = session
        self.device = transport
        self.certificate_id = session.certificate_id
        early, self.device_protocol.early = self.device_protocol.early, None
        self._timer = self.loop.call_later(self.gw.config.limits.connect_timeout, self._connect_deadline)
        if self.device.is_closing():
            self.device_closed(None)
            return
        for data in early or ():
            self.device_data(data)

    @property
    def closed(self) -> bool:
        return self.done.done()

    def _connect_deadline(self) -> None:
        self._timer = None
        if self.session is not None and self.session.state is State.AWAIT_CONNECT:
            self._step("connect deadline", self.session.connect_timeout)

    # ------------------------------------------------------------------ inputs

    def _step(self, where: str, fn: Callable, *args) -> None:
        """Run one session input and apply its effects; a bug ends this connection only."""
        try:
            fn(*args)
            self.flush()
        except Exception as exc:  # noqa: BLE001
            self._crash(where, exc)

    def service_reply(self, topic: str, payload: bytes) -> None:
        session = self.session
        if session is not None and not self.closed:
            self._step("service reply", session.deliver_local, topic, payload)

    def device_data(self, data: bytes) -> None:
        session = self.session
        if session is not None and not self.closed:
            self._step("device packet", session.receive_device, data, self.loop.time())

    def upstream_data(self, data: bytes) -> None:
        session = self.session
        if session is not None and not self.closed:
            self._step("upstream packet", session.receive_upstream, data, self.loop.time())

    def device_closed(self, exc: BaseException | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        if self.session is None:
            self._finish_quietly()
            return
        if not self.closed:
            detail = "connection closed by the device" if exc is None else f"connection lost: {exc}"
            self._step("device close", self.session.device_lost, detail)

    def upstream_closed(self, exc: BaseException | None) -> None:
        self.upstream = None
        if self.session is not None and not self.closed:
            detail = "connection closed by the broker" if exc is None else str(exc)
            self._step("upstream close", self.session.upstream_lost, detail)

    def take_over(self) -> None:
        if self.session is not None and not self.closed:
            self._step("takeover", self.session.taken_over)

    def shutdown(self) -> None:
        if self.session is not None and not self.closed:
            self._step("shutdown", self.session.shutdown)

    def update_auth(self, auth, cause: str = "registry change") -> None:
        if self.session is not None and not self.closed:
            self._step(cause, self.session.update_auth, auth, cause)
            if isinstance(auth, Principal) and not self.closed:
                self.arm_auth_timers(auth)

    def arm_auth_timers(self, principal: Principal) -> None:
        """A custom authorizer's disconnectAfterInSeconds / refreshAfterInSeconds (a temporary key's expiry)."""
        for handle in self._auth_timers:
            handle.cancel()
        self._auth_timers = []
        now = self.loop.time()
        if principal.disconnect_after is not None:
            at = now + principal.disconnect_after
            self._disconnect_at = at if self._disconnect_at is None else min(self._disconnect_at, at)
        if self._disconnect_at is not None:
            self._auth_timers.append(self.loop.call_at(self._disconnect_at, self._disconnect_after))
        if principal.refresh_after is not None and principal.kind == "authorizer":
            self._auth_timers.append(self.loop.call_later(principal.refresh_after, self.gw.refresh_principal, self))

    def _disconnect_after(self) -> None:
        auth = self.session.principal if self.session is not None else None
        log = auth.log if auth is not None else ()
        what = "the token's time" if auth is not None and auth.kind == "authorizer" else "the access key's time"
        self.update_auth(AuthRefusal(None, "disconnect_after", f"{what} is over (disconnectAfterInSeconds)",
                                     log=log), cause="authorization expired")

    def backpressure(self, *, device_full: bool | None = None, upstream_full: bool | None = None) -> None:
        # A slow reader on one side pauses reading from the other: memory per connection stays bounded. A device
        # that does not read its own side is not read either: the gateway's own answers (PINGRESP, SUBACK,
        # negative PUBACK) would otherwise pile up in its write buffer.
        if device_full is not None:
            self._device_full = device_full
            if self.upstream is not None and not self.upstream.is_closing():
                (self.upstream.pause_reading if device_full else self.upstream.resume_reading)()
        if upstream_full is not None:
            self._upstream_full = upstream_full
        self._set_device_reading(not (self._device_full or self._upstream_full))

    def _set_device_reading(self, reading: bool) -> None:
        if reading != self._reading_paused:
            return
        device = self.device
        if device is None or device.is_closing():
            return
        if reading:
            self._reading_paused = False
            device.resume_reading()
            if self.session is not None:
                # The time the gateway did not read counts as activity: keepalive measures the device, not us.
                self.session.last_device_rx = max(self.session.last_device_rx, self.loop.time())
        else:
            self._reading_paused = True
            device.pause_reading()

    # ------------------------------------------------------------------ effects

    def flush(self) -> None:
        session = self.session
        out = session.out
        if out.device:
            if self.device is not None and not self.device.is_closing():
                self.device.write(b"".join(out.device))  # one write per batch, not a TLS record per packet
            out.device.clear()
        if out.upstream:
            if self.upstream is not None and not self.upstream.is_closing():
                self.upstream.writelines(out.upstream)
                self.last_up_tx = self.loop.time()
            out.upstream.clear()
        if out.acked:
            for seconds in out.acked:
                self.gw.metrics.forward_seconds.observe(seconds)
            out.acked.clear()
        if out.service:
            if not self._active and session.state is State.ACTIVE:
                self._activate()  # the connected event goes before what the session did next
            if self.gw.services is not None:
                self.gw.service_effects(self, out.service)
            out.service.clear()
        if out.events:
            for event in out.events:
                self.gw.record(event, session.peer)
            out.events.clear()
        if out.claim is not None:
            self.client_id = out.claim
            out.claim = None
            old = self.gw.directory.claim(self.client_id, self)
            if old is not None:
                old.take_over()
        if out.open_upstream:
            out.open_upstream = False
            if not self.want_upstream.done():
                self.want_upstream.set_result(True)
        if out.close is not None:
            self._finish(out.close)
            return
        if not self._active and session.state is State.ACTIVE:
            self._activate()
        device = self.device
        if device is not None and not device.is_closing() \
                and device.get_write_buffer_size() > self.gw.config.limits.max_device_buffer:
            self._step("device write buffer", session.device_not_reading, self.gw.config.limits.max_device_buffer)

    def _activate(self) -> None:
        self._active = True
        self.gw.metrics.gauges["sessions_active"] += 1
        if self.secured_at is not None:
            self.gw.metrics.connack_seconds.observe(self.loop.time() - self.secured_at)
        if self.gw.services is not None:
            self.gw.services.connected(id(self), self.gw.service_caller(self))
        self._cancel_timer()
        self._schedule_keepalive(self.session.keepalive * 0.5)

    def _schedule_keepalive(self, delay: float) -> None:
        self._timer = self.loop.call_later(max(delay, 0.05), self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        session = self.session
        if self.closed or session is None:
            return
        now = self.loop.time()
        ka = session.keepalive
        if self._reading_paused:  # the gateway is not reading the device: its silence is ours
            session.last_device_rx = now
        idle = now - session.last_device_rx
        if idle >= ka * 1.5:
            self._step("keepalive", session.keepalive_expired)
            return
        if now - self.last_up_tx >= ka * 0.5:
            self._step("upstream ping", session.upstream_ping)
            if self.closed:
                return
        self._schedule_keepalive(min(ka * 1.5 - idle, ka * 0.5))

    async def open_upstream(self) -> None:
        session = self.session
        try:
            self.upstream = await self.gw.connector.open(lambda: _UpstreamProtocol(self))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is "server unavailable"
            if not self.closed:
                self._step("upstream connect", session.upstream_failed, _describe(exc))
            return
        if self.closed:
            self.upstream.abort()
            self.upstream = None
            return
        self._cancel_timer()
        self._timer = self.loop.call_later(self.gw.config.limits.upstream_timeout, self._upstream_deadline)
        self._step("upstream connect", session.upstream_connected)

    def _upstream_deadline(self) -> None:
        self._timer = None
        if self.session is not None and self.session.state is State.UPSTREAM_PENDING:
            self._step("upstream deadline", self.session.upstream_failed, "no CONNACK before the deadline")

    def _finish(self, close) -> None:
        if self.done.done():
            return
        self._cancel_timer()
        for handle in self._auth_timers:
            handle.cancel()
        self._auth_timers = []
        if self._active:
            self.gw.metrics.gauges["sessions_active"] -= 1
            if self.gw.services is not None:
                self.gw.services.disconnected(id(self), close.key)
        self.gw.session_ended(self.session)
        if self.client_id is not None:
            self.gw.directory.release(self.client_id, self)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if close.graceful_upstream:
                upstream.close()
            else:
                upstream.abort()  # no DISCONNECT: the broker publishes the will, as for any unclean end
        device = self.device
        if device is not None and not device.is_closing():
            device.close()  # flushes what is buffered (CONNACK / DISCONNECT) first
            self._abort_timer = self.loop.call_later(CLOSE_GRACE, device.abort)
        if not self.want_upstream.done():
            self.want_upstream.set_result(False)
        self.done.set_result(close)

    def _finish_quietly(self) -> None:
        if not self.want_upstream.done():
            self.want_upstream.set_result(False)
        if not self.done.done():
            self.done.set_result(None)

    def _crash(self, where: str, exc: Exception) -> None:
        self.gw.internal_error(f"{where} from {self.session.peer.source}", exc)
        with contextlib.suppress(Exception):
            self.session.out.device.clear()
            self.session.out.upstream.clear()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if self.device is not None:
            self.device.abort()
        if self.session is not None and not self.closed:
            self.session.state = State.CLOSED  # its state may be inconsistent: no more session code runs
            with contextlib.suppress(Exception):
                self.session.out.events.clear()
                self.gw.record({"event": "disconnect", "source": self.session.peer.source,
                                "certificate_id": self.certificate_id, "thing": None, "client_id": self.client_id,
                                "action": None, "resource": None, "decision": "closed", "statement": None,
                                "kind": "internal_error", "reason": f"internal error: {type(exc).__name__}"},
                               self.session.peer)
            self._finish(Close("internal_error", str(exc)))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


class Gateway:
    """The gateway: build with a GatewayConfig, ``await start()``, ``await serve_forever()`` or ``stop()``."""

    def __init__(self, config: GatewayConfig, *, registry: Registry | None = None,
                 acceptor: TLSAcceptor | None = None, token_acceptor: TLSAcceptor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics(clock, worker=config.worker or 0)
        self.access = AccessLog(config.access_log_target, clock=clock)
        self.directory = SessionDirectory()
        self.authenticator = X509Authenticator(region=config.region, account=config.account)
        self.custom = CustomAuthenticator(region=config.region, account=config.account, clock=clock)
        self.sigv4 = SigV4Authenticator(config.home, region=config.region, account=config.account, clock=clock,
                                        replay=ReplayCache(directory=config.replay_dir))
        self.view: AuthView = empty_view()
        self.connections: set[Connection] = set()
        self.by_cert: dict[str, set[Connection]] = {}
        self.by_principal: dict[str, set[Connection]] = {}  # "authorizer:NAME" / "key:AKID" -> connections
        lim = config.limits
        self.client_limiter = RateLimiter(lim.connect_rate_per_client_id, lim.connect_burst_per_client_id,
                                          lim.max_rate_keys)
        self.source_limiter = RateLimiter(lim.connect_rate_per_source, lim.connect_burst_per_source, lim.max_rate_keys)
        self._registry = registry
        self._owns_registry = registry is None
        self._acceptor = acceptor
        self._token_acceptor = token_acceptor
        self._token_listener: socket.socket | None = None
        self.token_port: int | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotgate-registry")
        self.watcher: RegistryWatcher | None = None
        self.proxy = ProxyAcceptor(config.trusted_proxies) if config.proxy_protocol else None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self._jit: dict[str, asyncio.Future] = {}  # certificate id -> its registration under way
        self._services: list[asyncio.Task] = []
        self._metrics_server = None
        self._ended = [0, 0]  # publishes forwarded, deliveries forwarded, by sessions that ended
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connector: UpstreamConnector | None = None
        self.services: ServiceHub | None = None
        self.port = 0

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        cfg = self.config
        pki = PKIPaths(cfg.home)
        target = parse_upstream_url(cfg.upstream)
        self.connector = UpstreamConnector(target, pki, username=cfg.upstream_username,
                                           password_file=cfg.password_file, timeout=cfg.limits.upstream_timeout,
                                           engine=cfg.tls_engine)
        if self.connector.tls is not None:
            self.metrics.upstream_tls = self.connector.tls.sessions
        if self._registry is None:
            self._registry = await self.loop.run_in_executor(
                self._executor, lambda: Registry.open(cfg.registry_url, create=False))
        view = await self.loop.run_in_executor(self._executor, self._load_view, None)
        for path in (pki.server_cert, pki.server_key):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; the gateway's server certificate comes from "
                                        f"`iotgate --home {cfg.home} pki init`")
        if self._acceptor is None:
            self._acceptor = make_acceptor(cfg.tls_engine, pki.server_cert, pki.server_key, view.ca_pems,
                                           handshake_timeout=cfg.limits.handshake_timeout, alpn=DEVICE_ALPN)
        else:
            self._acceptor.set_trust(view.ca_pems)
        self.view = view
        self.metrics.registry_version = view.counter
        self.metrics.registry_reloads += 1
        self.watcher = RegistryWatcher(self, self._registry, self._executor,
                                       poll_interval=cfg.limits.registry_poll_interval,
                                       max_staleness=cfg.limits.registry_max_staleness, clock=self.loop.time)
        if not view.ca_pems:
            print("iotgate gateway: the registry holds no CA: every device will be refused until one is "
                  "registered (`iotgate pki init` registers the home's CAs)", file=sys.stderr)
        self._listener = _listen(cfg.host, cfg.port, "--port", reuse_port=cfg.reuse_port)
        self.port = self._listener.getsockname()[1]
        listen = f"{cfg.host}:{self.port}"
        if cfg.token_port is not None:
            if self._token_acceptor is None:
                self._token_acceptor = make_acceptor(cfg.tls_engine, pki.server_cert, pki.server_key,
                                                     handshake_timeout=cfg.limits.handshake_timeout,
                                                     client_certificates=False, alpn=TOKEN_ALPN)
            try:
                self._token_listener = _listen(cfg.host, cfg.token_port, "--token-port", reuse_port=cfg.reuse_port)
            except OSError:
                self._listener.close()
                raise
            self.token_port = self._token_listener.getsockname()[1]
            listen += f", {cfg.host}:{self.token_port} (tokens, WebSocket)"
        self.metrics.info.update(listen=listen, upstream=str(target), state="running")
        self.record(upstream_event(target, pki, cfg.upstream_username), None)
        if cfg.metrics_port:
            self._metrics_server = await start_metrics_server(self.metrics, cfg.metrics_host, cfg.metrics_port,
                                                               refresh=self.stats)
        self.services = ServiceHub(self._registry, self.connector, clock=self.clock, on_error=self.internal_error,
                                   issuer=self._issuer, deliver=self._deliver, account=cfg.account, region=cfg.region)
        self._services = [
            self.loop.create_task(self.services.run(), name="iotgate-services"),
            self.loop.create_task(self._accept_loop(self._listener, False), name="iotgate-accept"),
            self.loop.create_task(self.watcher.run(), name="iotgate-registry-watch"),
            self.loop.create_task(self._housekeeping(), name="iotgate-housekeeping"),
        ]
        if self._token_listener is not None:
            self._services.append(self.loop.create_task(self._accept_loop(self._token_listener, True),
                                                        name="iotgate-accept-token"))

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for listener in (self._listener, self._token_listener):
            if listener is not None:
                listener.close()
        for task in self._services:
            task.cancel()
        await asyncio.gather(*self._services, return_exceptions=True)
        for conn in list(self.connections):
            conn.shutdown()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.access.close()
        self.metrics.info["state"] = "stopped"
        self._write_stats()
        if self._owns_registry and self._registry is not None:
            await self.loop.run_in_executor(self._executor, self._registry.close)
        self._executor.shutdown(wait=False)
        self._stopped.set()

    # ------------------------------------------------------------------ accepting

    async def _accept_loop(self, listener: socket.socket, token: bool) -> None:
        """Accept until stopped: a bug while admitting one connection is logged and accepting resumes."""
        backoff = ACCEPT_BACKOFF
        while True:
            try:
                await self._accept_connections(listener, token)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any one bad accept
                if self._stopping:
                    return
                self.internal_error("the accept loop (restarting it)", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)

    async def _accept_connections(self, listener: socket.socket, token: bool) -> None:
        loop = self.loop
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError:
                if self._stopping:
                    return
                await asyncio.sleep(0.05)  # e.g. EMFILE: back off instead of spinning
                continue
            try:
                self._admit(sock, addr, token)
            except BaseException:
                sock.close()
                raise

    def _admit(self, sock: socket.socket, addr: tuple, token: bool = False) -> None:
        loop = self.loop
        lim = self.config.limits
        ip = addr[0]
        if len(self.connections) >= lim.max_connections:
            self._refuse_socket(sock, addr, "server_busy",
                                f"{lim.max_connections} connections open (max_connections)")
            return
        if self.watcher.refusing():
            self._refuse_socket(sock, addr, "registry_unavailable",
                                f"the registry has not answered for {self.watcher.staleness():.0f} s "
                                f"(registry_max_staleness {self.watcher.max_staleness:g} s)")
            return
        proxied = self.proxy is not None and self.proxy.trusted(ip)
        if not proxied and not self._source_allowed(sock, addr):  # behind a proxy: once its header names the source
            return
        conn = Connection(self, addr)
        self.connections.add(conn)
        self.metrics.gauges["connections_open"] = len(self.connections)
        task = loop.create_task(self._serve(conn, sock, token), name=f"iotgate-conn-{ip}:{addr[1]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _source_allowed(self, sock: socket.socket, addr: tuple) -> bool:
        if self.source_limiter.allow(addr[0], self.loop.time()):
            return True
        self._refuse_socket(sock, addr, "source_rate_exceeded",
                            f"more than {self.config.limits.connect_rate_per_source:g} connections/s from this address")
        return False

    async def _proxied_source(self, conn: Connection, sock: socket.socket) -> bool:
        """PROXY protocol: the device's address becomes the connection's; False when refused (logged)."""
        proxy_addr = conn.addr
        try:
            conn.addr = await self.proxy.resolve(sock, conn.addr, self.config.limits.handshake_timeout)
        except ProxyProtocolError as exc:
            self._refuse_socket(sock, proxy_addr, exc.kind, exc.reason)
            return False
        except TimeoutError:
            self._refuse_socket(sock, proxy_addr, "proxy_header_timeout", "no PROXY header before the deadline")
            return False
        except OSError as exc:
            self._refuse_socket(sock, proxy_addr, "proxy_header_invalid", f"reading the PROXY header: {exc}")
            return False
        if conn.addr is not proxy_addr and not self._source_allowed(sock, conn.addr):
            return False
        return True

    def _refuse_socket(self, sock: socket.socket, addr: tuple, kind: str, reason: str) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        self.record(_bare_event("tls", addr, "refused", kind, reason), None)

    async def _serve(self, conn: Connection, sock: socket.socket, token: bool = False) -> None:
        try:
            if self.proxy is not None and not await self._proxied_source(conn, sock):
                return
            acceptor = self._token_acceptor if token else self._acceptor
            started = self.loop.time()
            try:
                transport, _, tls = await acceptor.accept(sock, lambda: conn.device_protocol)
            except HandshakeFailed as exc:
                self.record(_bare_event("tls", conn.addr, "refused", exc.key, exc.reason), None)
                return
            conn.secured_at = self.loop.time()
            self.metrics.handshake_seconds.observe(conn.secured_at - started)
            conn.device = transport  # from here on every way out aborts it (the except clauses below)
            transport.set_write_buffer_limits(high=DEVICE_WRITE_HIGH_WATER)
            no_connect = False
            if token:
                outcome = await self._token_auth(conn, transport, tls)
                if outcome is None:  # refused at the WebSocket upgrade (answered and logged) or gone
                    return
                auth, no_connect = outcome
            else:
                auth = self.authenticator.authenticate(tls.der, self.view)
                if isinstance(auth, AuthRefusal) and auth.key in JIT_KEYS and self.view.auto_registration:
                    auth = await self._just_in_time(auth, tls.der)
                conn.der = tls.der
            peer = Peer(conn.addr[0], conn.addr[1], tls.server_name, tls.version)
            lim = self.config.limits
            session = Session(peer, auth, lim, connect_limiter=self.client_limiter,
                              upstream_username=self.connector.username, upstream_password=self.connector.password,
                              assign_client_id=_assign_client_id, now=self.loop.time(),
                              serves=self.services.serves if self.services is not None else None)
            table, key = (self.by_principal, conn.principal_key) if token else (self.by_cert, auth.certificate_id)
            if key is not None:
                table.setdefault(key, set()).add(conn)
            try:
                conn.start(session, conn.device)
                if no_connect and not conn.closed:
                    conn._step("connect deadline", session.connect_timeout)
                if isinstance(auth, Principal) and not conn.closed:
                    conn.arm_auth_timers(auth)
                if await conn.want_upstream:
                    await conn.open_upstream()
                await conn.done
                # let the last packets (CONNACK / DISCONNECT) reach the device before the abort timer fires
            finally:
                peers = table.get(key)
                if peers is not None:
                    peers.discard(conn)
                    if not peers:
                        del table[key]
                if not conn.closed:
                    conn.shutdown()
                    if not conn.closed:
                        conn._finish_quietly()
                    if conn.device is not None:
                        conn.device.abort()
        except asyncio.CancelledError:
            if conn.device is not None:
                conn.device.abort()
            if conn.upstream is not None:
                conn.upstream.abort()
            raise
        except Exception as exc:  # noqa: BLE001
            self.internal_error(f"connection from {conn.addr}", exc)
            if conn.device is not None:
                conn.device.abort()
            if conn.upstream is not None:
                conn.upstream.abort()
        finally:
            self.connections.discard(conn)
            self.metrics.gauges["connections_open"] = len(self.connections)

    # ------------------------------------------------------------------ just-in-time registration

    async def _just_in_time(self, refusal: AuthRefusal, der: bytes) -> AuthRefusal:
        """An unknown or PENDING_ACTIVATION certificate while some CA auto-registers: JITR or JITP (see
        gateway.provisioning.jit). The connection is refused either way, as AWS IoT refuses it; the refusal says
        what was done. One registration per certificate at a time."""
        cert_id = refusal.certificate_id
        view = self.view
        if not jit.may_auto_register(der, view.auto_registration, dict(zip(sorted(view.ca_set), view.ca_pems))):
            return refusal
        pending = self._jit.get(cert_id)
        if pending is None:
            now = dt.datetime.now(dt.UTC)
            pending = self.loop.run_in_executor(
                self._executor, lambda: jit.just_in_time(self._registry, der, account=self.config.account, now=now))
            self._jit[cert_id] = pending
            pending.add_done_callback(lambda _: self._jit.pop(cert_id, None))
        try:
            outcome = await asyncio.shield(pending)
        except Exception as exc:  # noqa: BLE001 - a registry failure refuses this connection, never the gateway
            self.internal_error(f"just-in-time registration of {cert_id}", exc)
            return refusal
        if outcome.kind == "none":
            return refusal
        if outcome.event is not None and self.services is not None:
            self.services.link.publish(*outcome.event)  # to the broker, as the services' own messages
        self.record({"event": "jit", "certificate_id": cert_id, "ca_id": outcome.ca_id, "thing": outcome.thing,
                     "decision": "refused", "kind": outcome.kind, "reason": outcome.reason}, None)
        key = {"jitr": "certificate_pending_activation", "jitp": "certificate_provisioned_jitp"}.get(
            outcome.kind, "jitp_failed")
        return AuthRefusal(cert_id, key, outcome.reason)

    # ------------------------------------------------------------------ tokens and SigV4 (the token listener)

    async def _early_bytes(self, conn: Connection, deadline: float) -> bytes | None:
        """The bytes that arrived before the session exists, waiting for some until ``deadline``; None when the
        device closed or the deadline passed first. Consumes them."""
        proto = conn.device_protocol
        if proto.arrived is None:
            proto.arrived = asyncio.Event()
        while not proto.early:
            if conn.device.is_closing() or self.loop.time() >= deadline:
                return None
            proto.arrived.clear()
            try:
                await asyncio.wait_for(proto.arrived.wait(), deadline - self.loop.time())
            except TimeoutError:
                return None
        data = b"".join(proto.early)
        proto.early.clear()
        return data

    async def _token_auth(self, conn: Connection, transport, tls) -> tuple[Principal | AuthRefusal, bool] | None:
        """Authenticate a connection of the token listener: (principal or refusal, no CONNECT came), or None when
        it was refused at the WebSocket upgrade."""
        creds = Credentials(server_name=tls.server_name, source_ip=conn.addr[0])
        if tls.alpn != "mqtt":
            upgraded = await self._upgrade(conn, transport, creds)
            if upgraded is None:
                return None
            auth, creds = upgraded
            if auth is not None:
                return auth, False
        connect, pending, timed_out = await self._first_connect(conn)
        conn.device_protocol.early[:0] = pending  # replayed into the session, which decides on them again
        if connect is None:  # no CONNECT, or not a valid one: the session gives the refusal it always gives
            return AuthRefusal(None, "no_credentials", "no CONNECT with credentials"), timed_out
        creds = dataclasses.replace(creds, username=connect.username, password=connect.password,
                                    client_id=connect.client_id or None)
        return await self._authorize(conn, creds), False

    async def _authorize(self, conn: Connection, creds: Credentials) -> Principal | AuthRefusal:
        conn.creds = creds
        authorizer = self.custom.resolve(creds, self.view)
        if isinstance(authorizer, AuthRefusal):
            return authorizer
        conn.principal_key = f"authorizer:{authorizer.name}"
        response = await self.custom.invoke(authorizer, creds, self.view)
        return self.custom.principal(authorizer, response, self.view)

    async def _first_connect(self, conn: Connection):
        """(the first packet decoded as a CONNECT or None, the bytes read so far, whether the CONNECT deadline
        passed) - the bytes are not consumed: the session reads them again."""
        deadline = self.loop.time() + self.config.limits.connect_timeout
        framer = Framer(self.config.limits.max_packet_size)
        pending: list[bytes] = []
        while True:
            data = await self._early_bytes(conn, deadline)
            if data is None:
                return None, pending, not conn.device.is_closing()
            pending.append(data)
            try:
                frame = next(iter(framer.feed(data)), None)
                if frame is None:
                    continue
                if frame.packet_type is not PacketType.CONNECT:
                    return None, pending, False
                return decode(frame), pending, False
            except MQTTProtocolError:
                return None, pending, False

    async def _upgrade(self, conn: Connection, transport, creds: Credentials):
        """MQTT over WebSocket: read the upgrade request, authenticate it when it is signed (SigV4) or names a
        custom authorizer, answer 101 or AWS's refusal. (principal or None, credentials) or None when refused."""
        ws = WebSocketServer()
        deadline = self.loop.time() + self.config.limits.handshake_timeout
        try:
            request = None
            while request is None:
                data = await self._early_bytes(conn, deadline)
                if data is None:
                    self.record(_bare_event("websocket", conn.addr, "refused", "websocket_timeout",
                                            "no WebSocket upgrade request before the deadline"), None)
                    transport.abort()
                    return None
                request = ws.receive_head(data)
        except UpgradeError as exc:
            self._refuse_upgrade(conn, transport, ws, exc.status, AuthRefusal(None, exc.key, exc.reason))
            return None
        _, query = sigv4.split_target(request.target)
        creds = dataclasses.replace(creds, headers=request.headers, query=query)
        auth: Principal | AuthRefusal | None = None
        if sigv4.has_signature(query):
            auth = self.sigv4.authenticate(request.method, request.target, request.headers, self.view)
            if isinstance(auth, Principal):
                conn.principal_key = f"key:{dict(auth.log)['access_key']}"
        elif creds.lookup(NAME_PARAM) is not None:
            auth = await self._authorize(conn, creds)
        if isinstance(auth, AuthRefusal):
            self._refuse_upgrade(conn, transport, ws, 403, auth)
            return None
        if transport.is_closing():
            return None
        try:
            answer, payload = ws.accept()
        except UpgradeError as exc:
            self._refuse_upgrade(conn, transport, ws, exc.status, AuthRefusal(None, exc.key, exc.reason))
            return None
        transport.write(answer)
        proto = conn.device_protocol
        late = b"".join(proto.early)  # raw bytes that came while the request was being authenticated
        proto.early.clear()
        if late:
            more, reply = ws.receive(late)
            payload += more
            if reply:
                transport.write(reply)
        proto.ws = ws
        if payload:
            proto.early.append(payload)
        conn.device = WebSocketTransport(transport, ws)
        return auth, creds

    def _refuse_upgrade(self, conn: Connection, transport, ws: WebSocketServer, status: int,
                        refusal: AuthRefusal) -> None:
        if not transport.is_closing():
            transport.write(ws.reject(status, refusal.reason))
            transport.close()
        event = _bare_event("connect", conn.addr, "refused", refusal.key, refusal.reason)
        event.update(action="iot:Connect", transport="websocket", status=status, **dict(refusal.log))
        self.record(event, None)

    def refresh_principal(self, conn: Connection) -> None:
        """refreshAfterInSeconds elapsed: ask the authorizer again (in a task the gateway owns)."""
        if conn.closed or conn.creds is None:
            return
        task = self.loop.create_task(self._reauthorize(conn, "authorizer refresh"), name="iotgate-auth-refresh")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reauthorize(self, conn: Connection, cause: str) -> None:
        try:
            result = await self._authorize(conn, conn.creds)
        except Exception as exc:  # noqa: BLE001 - fail closed for this connection
            self.internal_error("re-running a custom authorizer", exc)
            result = AuthRefusal(None, "internal_error", "its authorization could not be re-evaluated")
        conn.update_auth(result, cause)

    # ------------------------------------------------------------------ registry

    def _load_view(self, previous: AuthView | None) -> AuthView:
        snapshot = self._registry.snapshot(certificate_pem=False)
        return AuthView(snapshot, previous)

    def apply_view(self, view: AuthView, changes: ChangeSet | None = None) -> None:
        """Switch to a new registry view: trust store, then every live session whose certificate changed
        (with ``changes``, the view's difference from the current one: only the sessions they touch)."""
        old = self.view
        self.view = view
        self.metrics.registry_version = view.counter
        self.metrics.registry_reloads += 1
        self.metrics.gauges["registry_change_counter"] = view.counter
        if changes is None or changes.cas:
            if self._acceptor.set_trust(view.ca_pems):
                self.metrics.tls_context_rebuilds += 1
        certs = self.by_cert.items() if changes is None else \
            [(c, conns) for c, conns in self.by_cert.items() if view.touched_by(c, changes)]
        for cert_id, conns in list(certs):
            if old.state(cert_id) == view.state(cert_id):
                continue
            der = next((c.der for c in conns if c.der), None)
            try:
                result = self.authenticator.evaluate(cert_id, view, der)
            except Exception as exc:  # noqa: BLE001 - fail closed for this certificate, carry on with the others
                self.internal_error(f"re-evaluating certificate {cert_id}", exc)
                result = AuthRefusal(cert_id, "internal_error", "its authorization could not be re-evaluated")
            for conn in list(conns):
                conn.update_auth(result)
        if changes is not None and changes.principals is None:
            return
        for key, conns in list(self.by_principal.items()):
            kind, _, name = key.partition(":")
            state = (lambda v: v.key_state(name)) if kind == "key" else (lambda v: v.authorizer_state(name))
            if state(old) == state(view):
                continue
            if kind == "key":
                result = self.sigv4.reevaluate(name, view)
                for conn in list(conns):
                    conn.update_auth(result)
            else:
                for conn in list(conns):
                    if not conn.closed and conn.creds is not None:
                        task = self.loop.create_task(self._reauthorize(conn, "registry change"),
                                                     name="iotgate-auth-registry")
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)

    async def reload(self, config: GatewayConfig) -> None:
        """SIGHUP: new limits, PROXY and rate settings for new connections, the registry (and so the CA set) read
        again in full; every live session is re-checked against it and those it refuses are closed. Listen
        addresses, upstream and server certificate stay as started."""
        kept = ("host", "port", "token_port", "upstream", "registry", "reuse_port", "worker", "metrics_file")
        moved = [k for k in kept if getattr(config, k) != getattr(self.config, k)]
        if moved:
            print(f"iotgate gateway: reload: {', '.join(moved)} change only on restart; kept", file=sys.stderr)
            config = dataclasses.replace(config, **{k: getattr(self.config, k) for k in kept})
        self.config = config
        lim = config.limits
        self.proxy = ProxyAcceptor(config.trusted_proxies) if config.proxy_protocol else None
        self.client_limiter = RateLimiter(lim.connect_rate_per_client_id, lim.connect_burst_per_client_id,
                                          lim.max_rate_keys)
        self.source_limiter = RateLimiter(lim.connect_rate_per_source, lim.connect_burst_per_source, lim.max_rate_keys)
        self.watcher.poll_interval = lim.registry_poll_interval
        self.watcher.max_staleness = lim.registry_max_staleness
        view = await self.loop.run_in_executor(self._executor, self._load_view, self.view)
        self.apply_view(view)
        print(f"iotgate gateway: configuration and registry reloaded (change {view.counter})", file=sys.stderr)

    # ------------------------------------------------------------------ observability

    def record(self, event: dict, peer: Peer | None) -> None:
        if self.config.worker is not None:
            event["worker"] = self.config.worker
        if event.get("event") == "connect" and peer is not None:
            event["sni"] = peer.server_name
            event["tls"] = peer.tls_version
        self.metrics.observe(event)
        self.access.write(event)

    def internal_error(self, where: str, exc: BaseException) -> None:
        print(f"iotgate gateway: internal error in {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)

    def service_caller(self, conn: Connection) -> Caller:
        session = conn.session
        return Caller(session.client_id or "", session.certificate_id or conn.principal_key, session.thing,
                      session.peer.ip, conn.serial)

    def _deliver(self, key: int, topic: str, payload: bytes) -> None:
        """A service's answer to one connection (fleet provisioning: it may carry a private key)."""
        for conn in self.connections:
            if conn.serial == key:
                conn.service_reply(topic, payload)
                return

    def _issuer(self):
        """The CA that signs certificates made by fleet provisioning: the home's issuing CA (its key, with
        IOTGATE_CA_PASSPHRASE when encrypted), loaded on first use."""
        passphrase = os.environ.get(PASSPHRASE_ENV)
        return PKIStore(self.config.home).load_issuer(passphrase.encode() if passphrase else None)

    def service_effects(self, conn: Connection, items: list) -> None:
        """A session's `$aws/...` requests and subscription changes, handed to the services."""
        for item in items:
            if isinstance(item, ServiceRequest):
                self.services.request(id(conn), self.service_caller(conn), item.topic, item.payload)
            else:
                self.services.subscribed(id(conn), item.event, item.filters)

    def session_ended(self, session: Session | None) -> None:
        if session is not None:
            self._ended[0] += session.published
            self._ended[1] += session.delivered

    def stats(self) -> dict:
        """The stats document, computed on the loop."""
        published, delivered = self._ended
        for conn in self.connections:
            if conn.session is not None and not conn.closed:
                published += conn.session.published
                delivered += conn.session.delivered
        self.metrics.messages["device_to_upstream"] = published
        self.metrics.messages["upstream_to_device"] = delivered
        if self.services is not None:
            m, hub = self.metrics.messages, self.services
            m["service_requests"], m["service_requests_throttled"] = hub.requests, hub.throttled
            m["service_published"], m["service_dropped"] = hub.link.published, hub.link.dropped
        return self.metrics.stats()

    async def _housekeeping(self) -> None:
        last_stats = -1e9
        while True:
            await asyncio.sleep(0.2)
            self.access.flush()
            now = self.loop.time()
            if now - last_stats >= self.config.stats_interval:
                last_stats = now
                data = self.stats()
                await self.loop.run_in_executor(None, self._write_stats, data)

    def _write_stats(self, data: dict | None = None) -> None:
        path = self.config.stats_path
        if data is None:
            data = self.stats()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n", mode=0o640)
            if self.config.metrics_file is not None:
                write_file(self.config.metrics_file, self.metrics.prometheus(), mode=0o640)
        except OSError as exc:
            print(f"iotgate gateway: cannot write the stats file {path}: {exc}", file=sys.stderr)


def _listen(host: str, port: int, option: str, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # worker processes share the port; the kernel spreads new connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EACCES and 0 < port < 1024:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}: ports below 1024 need root, or the "
                          "CAP_NET_BIND_SERVICE capability (sudo setcap cap_net_bind_service=+ep on the Python "
                          f"binary), or authbind; or choose another {option}") from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another {option}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _bare_event(event: str, addr: tuple, decision: str, kind: str, reason: str) -> dict:
    ip, port = addr[0], addr[1]
    source = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return {"event": event, "source": source, "certificate_id": None, "thing": None, "client_id": None,
            "action": None, "resource": None, "decision": decision, "statement": None, "kind": kind,
            "reason": reason}


def upstream_event(target, pki: PKIPaths, username: str) -> dict:
    """The access-log line naming the gateway's own identity towards the broker (the gateway -> broker hop)."""
    event = {"event": "upstream", "source": None, "certificate_id": None, "thing": None, "client_id": None,
             "action": None, "resource": str(target), "decision": "configured", "statement": None,
             "identity": username}
    if target.scheme == "unix":
        event.update(kind="password", auth="password", reason="unix socket with the gateway's own password")
        return event
    event.update(kind="mtls", auth="mtls", reason="mutual TLS with the gateway's client certificate")
    try:
        cert = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
        event["certificate_id"] = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        event["ca"] = cert.issuer.rfc4514_string()
    except (OSError, ValueError):
        event["reason"] += " (not readable here: not identified)"
    return event


def _assign_client_id() -> str:
    return f"iotgate-{secrets.token_hex(8)}"


# --------------------------------------------------------------------------------------------- runners

def run(config: GatewayConfig, *, on_ready: Callable[[Gateway], None] | None = None,
        reload: Callable[[], GatewayConfig] | None = None) -> None:
    """Run the gateway on uvloop until SIGINT/SIGTERM, then drain; SIGHUP applies ``reload()``'s configuration."""
    import signal

    import uvloop

    async def main() -> None:
        gateway = Gateway(config)
        await gateway.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: loop.create_task(gateway.stop()))
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(gateway, reload)))
        if on_ready is not None:
            on_ready(gateway)
        await gateway.serve_forever()

    uvloop.run(main())


async def _reload(gateway: Gateway, load: Callable[[], GatewayConfig]) -> None:
    try:
        config = load()
    except Exception as exc:  # noqa: BLE001 - a bad file keeps the running configuration
        print(f"iotgate gateway: reload refused, keeping the running configuration: {exc}", file=sys.stderr)
        return
    try:
        await gateway.reload(config)
    except Exception as exc:  # noqa: BLE001
        gateway.internal_error("reloading", exc)


class GatewayThread:
    """The gateway on its own uvloop in a background thread (tests, benchmarks, embedding)."""

    def __init__(self, config: GatewayConfig, **kwargs) -> None:
        self.config = config
        self.kwargs = kwargs
        self.gateway: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="iotgate-gateway", daemon=True)

    def start(self, timeout: float = 15.0) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the gateway did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.gateway.port

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.gateway = Gateway(self.config, **self.kwargs)
            loop.run_until_complete(self.gateway.start())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self.gateway.serve_forever())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, fn: Callable, *args, timeout: float = 10.0):
        """Run ``fn(*args)`` on the gateway's loop and return its result."""
        async def wrapper():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self.gateway is None or self.loop is None or self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout)
        self._thread.join(timeout)


__all__ = ["Connection", "Gateway", "GatewayThread", "SessionDirectory", "run"]
