"""The awsiotsdk connector: the AWS IoT Device SDK v2 (aws-crt) as a device on AWS IoT Core runs it.

``awsiot.mqtt_connection_builder.mtls_from_path(endpoint=, port=, cert_filepath=, pri_key_filepath=,
ca_filepath=, client_id=, clean_session=, keep_alive_secs=, ping_timeout_ms=, will=,
enable_metrics_collection=False)``: MQTT 3.1.1 over mutual TLS; on port 443 the builder offers ALPN
``x-amzn-mqtt-ca``. With ``protocol_level`` 5 the same through ``awsiot.mqtt5_client_builder.mtls_from_path`` (an
``awscrt.mqtt5.Client``: CONNACK, PUBACK, SUBACK and DISCONNECT reason codes are reported as sent). Against the
local gateway only the endpoint (``localhost``: the gateway's certificate names
localhost, 127.0.0.1 and ::1) and the CA (the home's ``root-ca.pem``) differ from an AWS run. CRT futures are
awaited with ``asyncio.wrap_future``; CRT callbacks (messages, interruptions) arrive on CRT threads and are
handed to the loop with ``call_soon_threadsafe``. The CRT builds its own TLS context per connection object
(s2n on Linux), once per link.

aws-crt reconnects an interrupted connection by itself; a link is one connection per :meth:`connect`, so an
interruption is reported as a :class:`DisconnectNotice` and the connection is then disconnected, which stops
the CRT's reconnecting.

TLS 1.2 at least: the SDK's builders have no minimum-version option and aws-crt's default (s2n's
``AWS-CRT-SDK-TLSv1.0`` policy) still negotiates TLS 1.0 and 1.1, so both builders get ``cipher_pref`` =
``TlsCipherPref.TLSv1_2_2025_07`` (TLS 1.2 and 1.3, forward-secret AES-GCM suites, P-256/P-384), the builders'
public way to choose the security policy. A platform whose TLS library lacks that policy is refused at connect.

Options: ``protocol_level`` 4 or 5, ``keep_alive`` (1..65535 s; ``ping_timeout`` is sent as ``ping_timeout_ms``, lowered below the
keep-alive because the CRT requires ``ping_timeout_ms < keep_alive_secs * 1000``), ``clean_start``, ``will``,
``username``/``password``, ``connect_timeout`` (TCP connect timeout and the bound on the whole attempt).
``max_resends`` 0 (the link ends on an interruption, so the CRT never resumes and re-sends). MQTT 5 also: ``session_expiry``. Not supported:
other ``max_resends`` limits, ``max_inflight`` (the CRT queues without a
client-side limit), ``max_packet_size``; refused when set to a non-default value.

Not reported, because the CRT does not expose them: packet ids (MQTT 5 client), DNS, TCP, TLS and CONNACK timings (only ``total``), the
negotiated TLS version, OpenSSL-style TLS reasons (a TLS failure carries the CRT's error name, such as
``AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE``), PUBACK/SUBACK packet properties. MQTT 3.1.1 has no PUBACK reason
codes: an acknowledged publish reports ``reason_code`` 0. :meth:`abort` cannot drop the connection without a
DISCONNECT (the CRT has no such call): it disconnects cleanly and reports ``aborted``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable

from awscrt import auth as crt_auth
from awscrt import exceptions as crt_exceptions
from awscrt import io as crt_io
from awscrt import mqtt as crt_mqtt
from awscrt import mqtt5 as crt_mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder

from devices.client import (DEFAULT_OPTIONS, ClientOptions, ConnectOutcome, ConnectTimings, DisconnectNotice,
                            Endpoint, PublishResult, Reason, SubscribeResult)
from devices.connectors._common import LinkBase, Inbox, code_name
from devices.identity import DeviceIdentity
from devices.token_devices import TokenIdentity
from gateway.mqtt import Publish

SUBACK_FAILURE = 0x80

#: The security policy given to the SDK's builders: TLS 1.2 minimum (see the module docstring).
TLS_POLICY = crt_io.TlsCipherPref.TLSv1_2_2025_07


class AwsIotSdkConnector:
    name = "awsiotsdk"

    def link(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
             on_disconnect: Callable[[DisconnectNotice], None] | None = None) -> AwsIotSdkLink | AwsIotSdk5Link:
        if isinstance(identity, TokenIdentity) and options.protocol_level != 5:
            raise ValueError("awsiotsdk: token and SigV4 devices use the SDK's MQTT 5 builders (the MQTT 3.1.1 "
                             "direct_with_custom_authorizer always dials port 443)")
        kind = AwsIotSdk5Link if options.protocol_level == 5 else AwsIotSdkLink
        return kind(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect)


def tls_policy() -> crt_io.TlsCipherPref:
    """The TLS 1.2+ policy, or OSError when this platform's TLS library does not have it."""
    if not TLS_POLICY.is_supported():
        raise OSError(f"this platform's TLS library has no {TLS_POLICY.name} policy: the AWS IoT Device SDK cannot "
                      "be held to TLS 1.2 here")
    return TLS_POLICY



def _crt(future):
    """Await a CRT future from asyncio. Shielded: giving up on it (a timeout, a closed link) must not cancel the
    CRT's own future, which the CRT completes later from its thread (a cancelled one makes it raise there)."""
    return asyncio.shield(asyncio.wrap_future(future))

def check_options(options: ClientOptions) -> None:
    """Refuse what the SDK's connections cannot honour."""
    problems = []
    if options.keep_alive < 1:
        problems.append("keep_alive 0 (the CRT needs a keep-alive longer than its ping timeout)")
    if options.max_resends not in (None, 0):  # 0 holds: the link disconnects on an interruption, never resumes
        problems.append("max_resends other than 0 (the CRT re-sends on its own terms)")
    if options.max_inflight != DEFAULT_OPTIONS.max_inflight:
        problems.append("max_inflight (the CRT has no client-side inflight limit)")
    if options.max_packet_size != DEFAULT_OPTIONS.max_packet_size:
        problems.append("max_packet_size")
    if problems:
        raise ValueError("awsiotsdk connector: not supported: " + "; ".join(problems))


def ping_timeout_ms(options: ClientOptions) -> int:
    """``ping_timeout`` in ms, kept below the keep-alive as the CRT requires."""
    return max(1, min(int(options.ping_timeout * 1000), options.keep_alive * 1000 - 1))


def failure_outcome(exc: BaseException) -> tuple[Reason, str, int | None, str]:
    """(reason, detail, CONNACK code, stage) for the exception a CRT connect future ended with."""
    if exc.args and isinstance(exc.args[0], crt_mqtt.ConnectReturnCode):
        code = int(exc.args[0])
        return Reason.REFUSED, code_name(4, code), code, "mqtt"
    name = getattr(exc, "name", "") or type(exc).__name__
    detail = f"{name}: {getattr(exc, 'message', '') or exc}"
    if name.startswith("AWS_IO_TLS") or "TLS" in name or name.startswith("AWS_IO_S2N"):
        return Reason.TLS, detail, None, "tls"
    if name.startswith("AWS_IO_DNS"):
        return Reason.DNS, detail, None, "dns"
    if name in ("AWS_IO_SOCKET_TIMEOUT", "AWS_ERROR_MQTT_TIMEOUT"):
        return Reason.TIMEOUT, detail, None, "mqtt"
    if name in ("AWS_IO_SOCKET_CONNECTION_REFUSED", "AWS_IO_SOCKET_NO_ROUTE_TO_HOST", "AWS_IO_SOCKET_NETWORK_DOWN"):
        return Reason.TCP, detail, None, "tcp"
    return Reason.CLOSED, detail, None, "mqtt"


class AwsIotSdkLink(LinkBase):
    """One device on the AWS IoT Device SDK v2 (see the module docstring). One connection per :meth:`connect`."""

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
                 on_disconnect: Callable[[DisconnectNotice], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        check_options(options)
        super().__init__(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect,
                         clock=clock)
        self._connection: crt_mqtt.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future | None = None
        self._closing: DisconnectNotice | None = None
        self._inbox: Inbox | None = None

    def _make_connection(self) -> crt_mqtt.Connection:
        o = self.options
        if self.endpoint.server_name not in (None, self.endpoint.host):
            raise ValueError("awsiotsdk: the server name must be the endpoint host (the CRT sends it as SNI)")
        will = None
        if o.will is not None:
            will = crt_mqtt.Will(o.will.topic, crt_mqtt.QoS(o.will.qos), o.will.payload, o.will.retain)
        return mqtt_connection_builder.mtls_from_path(
            endpoint=self.endpoint.host, port=self.endpoint.port, cert_filepath=self.identity.cert_file,
            pri_key_filepath=self.identity.key_file, ca_filepath=self.identity.ca_file, client_id=self._client_id,
            clean_session=o.clean_start, keep_alive_secs=o.keep_alive, ping_timeout_ms=ping_timeout_ms(o),
            tcp_connect_timeout_ms=int(o.connect_timeout * 1000), will=will, username=o.username,
            password=o.password, enable_metrics_collection=False, cipher_pref=tls_policy(),
            on_connection_interrupted=self._interrupted)

    # -------------------------------------------------------------------------------------- connect

    async def connect(self) -> ConnectOutcome:
        if self._connected:
            raise RuntimeError(f"{self._client_id}: connect() while connected")
        loop = self._loop = asyncio.get_running_loop()
        started = self.clock()

        def outcome(ok: bool, reason: Reason, detail: str = "", *, code: int | None = None,
                    session_present: bool = False, stage: str = "mqtt") -> ConnectOutcome:
            return ConnectOutcome(ok, reason, detail, code, session_present,
                                  ConnectTimings(total=self.clock() - started), None, stage)

        if self._connection is None:
            try:
                self._connection = self._make_connection()
            except (OSError, crt_exceptions.AwsCrtError) as exc:
                return outcome(False, Reason.IDENTITY, f"{self.identity.cert_file}: {exc}", stage="identity")
        self._closing = None
        self._closed = loop.create_future()
        connection = self._connection
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                result = await _crt(connection.connect())
        except TimeoutError:
            await self._stop()
            return outcome(False, Reason.TIMEOUT, f"no CONNACK within {self.options.connect_timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - every CRT failure becomes an outcome
            reason, detail, code, stage = failure_outcome(exc)
            return outcome(False, reason, detail, code=code, stage=stage)
        self._connected = True
        return outcome(True, Reason.CONNECTED, code=0, session_present=bool(result.get("session_present")))

    # -------------------------------------------------------------------------------------- ending

    def _interrupted(self, connection, error, **kwargs) -> None:  # a CRT thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost, error)

    def _lost(self, error: BaseException | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        was_connected, self._connected = self._connected, False
        if was_connected:
            notice, self._closing = self._closing, None
            if notice is None:
                name = getattr(error, "name", "") or ""
                detail = f"{name}: {getattr(error, 'message', '')}" if name else str(error or "")
                kind = "tls" if "TLS" in name else "keepalive" if name == "AWS_ERROR_MQTT_TIMEOUT" else "closed"
                notice = DisconnectNotice(kind, detail)
            if self.on_disconnect is not None:
                self.on_disconnect(notice)
        # one connection per connect(): stop the CRT's own reconnecting
        if self._loop is not None:
            self._loop.create_task(self._stop(), name=f"stop {self._client_id}")

    async def _stop(self) -> None:
        # taken once: the CRT fails a second disconnect() of one connection inside its own callback
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await _crt(connection.disconnect())
        except (TimeoutError, crt_exceptions.AwsCrtError):
            pass

    async def disconnect(self) -> None:
        if self._connected:
            self._closing = DisconnectNotice("client")
            self._connected = False
            await self._stop()
            notice, self._closing = self._closing, None
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            if self.on_disconnect is not None and notice is not None:
                self.on_disconnect(notice)
        else:
            await self._stop()

    def abort(self) -> None:
        """A clean DISCONNECT in fact: the CRT cannot drop a connection abruptly. Reported as ``aborted``."""
        if self._connected:
            self._closing = DisconnectNotice("aborted", "the SDK sent DISCONNECT (it cannot drop a connection)")
            self._connected = False
            notice, self._closing = self._closing, None
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            if self.on_disconnect is not None:
                self.on_disconnect(notice)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

    # -------------------------------------------------------------------------------------- publish / subscribe

    async def _until_closed(self, future):
        task = asyncio.ensure_future(_crt(future))
        await asyncio.wait({task, self._closed}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
        if task.done():
            return True, task
        task.cancel()
        return False, None

    async def _publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> PublishResult:
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not offered (0 or 1; AWS IoT Core has no QoS 2)")
        if not self._connected or self._connection is None:
            return PublishResult(False, "not-connected")
        started = self.clock()
        future, packet_id = self._connection.publish(topic, payload, crt_mqtt.QoS(qos), retain)
        done, task = await self._until_closed(future)
        latency = self.clock() - started
        if not done:
            return PublishResult(False, "closed", packet_id or None, latency=latency)
        if task.exception() is not None:
            return PublishResult(False, "closed", packet_id or None, latency=latency)
        if qos == 0:
            return PublishResult(True, "sent")
        return PublishResult(True, "acked", packet_id, 0, latency)

    async def _subscribe(self, *filters: str, qos: int = 1) -> SubscribeResult:
        """One SUBSCRIBE per filter (the SDK's ``subscribe`` takes one; ``subscribe_multiple`` has no per-filter
        failure); ``reason_codes`` in the order of ``filters``."""
        if not self._connected or self._connection is None:
            return SubscribeResult(False, "not-connected")
        started = self.clock()
        codes = []
        packet_id = None
        for topic_filter in filters:
            future, packet_id = self._connection.subscribe(topic_filter, crt_mqtt.QoS(qos), self._on_message)
            done, task = await self._until_closed(future)
            if not done:
                return SubscribeResult(False, "closed", tuple(codes), packet_id, self.clock() - started)
            exc = task.exception()
            if isinstance(exc, crt_mqtt.SubscribeError):
                codes.append(SUBACK_FAILURE)
            elif exc is not None:
                return SubscribeResult(False, "closed", tuple(codes), packet_id, self.clock() - started)
            else:
                codes.append(int(task.result()["qos"]))
        ok = all(c < 0x80 for c in codes)
        return SubscribeResult(ok, "granted" if ok else "refused", tuple(codes), packet_id, self.clock() - started)

    # -------------------------------------------------------------------------------------- messages

    def _on_message(self, topic, payload, dup, qos, retain, **kwargs) -> None:  # a CRT thread
        publish = Publish(topic, bytes(payload), int(qos), bool(retain), bool(dup))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._inbox_for().put, publish)

    def _inbox_for(self) -> Inbox:
        if self._inbox is None:
            self._inbox = Inbox(self.options.inbox_size)
        return self._inbox

    def messages(self) -> AsyncIterator[Publish]:
        """Every message of this link's subscriptions, in order of arrival (the CRT does not bound its reading)."""
        return aiter(self._inbox_for())

    def __repr__(self) -> str:
        return f"<AwsIotSdkLink {self._client_id} {'connected' if self._connected else 'disconnected'}>"


# ------------------------------------------------------------------------------------------------------ MQTT 5


def connack_failure(data: crt_mqtt5.LifecycleConnectFailureData) -> tuple[Reason, str, int | None, str]:
    """(reason, detail, CONNACK code, stage) of an MQTT 5 client's failed connection attempt."""
    connack = data.connack_packet
    if connack is not None and connack.reason_code is not None and int(connack.reason_code) >= 0x80:
        code = int(connack.reason_code)
        detail = code_name(5, code)
        if connack.reason_string:
            detail += f": {connack.reason_string}"
        return Reason.REFUSED, detail, code, "mqtt"
    if data.exception is None:
        return Reason.CLOSED, "the connection ended before CONNACK", None, "mqtt"
    return failure_outcome(data.exception)


class AwsIotSdk5Link(LinkBase):
    """One device on the SDK's MQTT 5 client (``mqtt5_client_builder``). One connection per :meth:`connect`: the
    client is started for it and stopped when that connection ends (the CRT would reconnect by itself)."""

    def __init__(self, identity: DeviceIdentity, endpoint: Endpoint, *, client_id: str, options: ClientOptions,
                 on_disconnect: Callable[[DisconnectNotice], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        check_options(options)
        super().__init__(identity, endpoint, client_id=client_id, options=options, on_disconnect=on_disconnect,
                         clock=clock)
        self._client: crt_mqtt5.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attempt: asyncio.Future | None = None  # the current connect(): success or failure data
        self._closed: asyncio.Future | None = None
        self._stopped: asyncio.Future | None = None
        self._closing: DisconnectNotice | None = None
        self._inbox: Inbox | None = None

    def _make_client(self) -> crt_mqtt5.Client:
        o = self.options
        if self.endpoint.server_name not in (None, self.endpoint.host):
            raise ValueError("awsiotsdk: the server name must be the endpoint host (the CRT sends it as SNI)")
        will = None
        if o.will is not None:
            will = crt_mqtt5.PublishPacket(topic=o.will.topic, payload=o.will.payload,
                                           qos=crt_mqtt5.QoS(o.will.qos), retain=o.will.retain)
        socket_options = crt_io.SocketOptions()
        socket_options.connect_timeout_ms = int(o.connect_timeout * 1000)
        behavior = (crt_mqtt5.ClientSessionBehaviorType.CLEAN if o.clean_start and not o.session_expiry
                    else crt_mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS)
        identity = self.identity
        if isinstance(identity, TokenIdentity):   # the SDK's own builders for devices without certificates
            common = dict(
                endpoint=self.endpoint.host, port=identity.port, ca_filepath=identity.ca_file,
                client_id=self._client_id, session_behavior=behavior,
                session_expiry_interval_sec=o.session_expiry or None, keep_alive_interval_sec=o.keep_alive,
                ping_timeout_ms=ping_timeout_ms(o), connack_timeout_ms=int(o.connect_timeout * 1000),
                socket_options=socket_options, will=will, enable_metrics_collection=False, cipher_pref=tls_policy(),
                min_reconnect_delay_ms=60_000, max_reconnect_delay_ms=120_000,
                on_publish_received=self._on_publish,
                on_lifecycle_connection_success=lambda data: self._from_crt(self._succeeded, data),
                on_lifecycle_connection_failure=lambda data: self._from_crt(self._failed, data),
                on_lifecycle_disconnection=lambda data: self._from_crt(self._lost, data),
                on_lifecycle_stopped=lambda data: self._from_crt(self._on_stopped, data))
            auth = identity.sdk_auth(dt.datetime.now(dt.UTC))
            if identity.auth == "token":
                return mqtt5_client_builder.direct_with_custom_authorizer(**common, **auth)
            credentials = crt_auth.AwsCredentialsProvider.new_static(auth["access_key_id"], auth["secret"])
            return mqtt5_client_builder.websockets_with_default_aws_signing(
                **common, region=auth["region"], credentials_provider=credentials)
        return mqtt5_client_builder.mtls_from_path(
            endpoint=self.endpoint.host, port=self.endpoint.port, cert_filepath=self.identity.cert_file,
            pri_key_filepath=self.identity.key_file, ca_filepath=self.identity.ca_file, client_id=self._client_id,
            session_behavior=behavior, session_expiry_interval_sec=o.session_expiry or None,
            keep_alive_interval_sec=o.keep_alive, ping_timeout_ms=ping_timeout_ms(o),
            connack_timeout_ms=int(o.connect_timeout * 1000), socket_options=socket_options, will=will,
            username=o.username, password=o.password, enable_metrics_collection=False, cipher_pref=tls_policy(),
            # the link stops the client when a connection ends; this only keeps the CRT from retrying meanwhile
            min_reconnect_delay_ms=60_000, max_reconnect_delay_ms=120_000,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=lambda data: self._from_crt(self._succeeded, data),
            on_lifecycle_connection_failure=lambda data: self._from_crt(self._failed, data),
            on_lifecycle_disconnection=lambda data: self._from_crt(self._lost, data),
            on_lifecycle_stopped=lambda data: self._from_crt(self._on_stopped, data))

    def _from_crt(self, handler, data) -> None:  # a CRT thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(handler, data)
            except RuntimeError:  # the loop closed meanwhile: nobody is left to tell
                pass

    # -------------------------------------------------------------------------------------- connect

    async def connect(self) -> ConnectOutcome:
        if self._connected:
            raise RuntimeError(f"{self._client_id}: connect() while connected")
        loop = self._loop = asyncio.get_running_loop()
        started = self.clock()

        def outcome(ok: bool, reason: Reason, detail: str = "", *, code: int | None = None,
                    session_present: bool = False, stage: str = "mqtt") -> ConnectOutcome:
            return ConnectOutcome(ok, reason, detail, code, session_present,
                                  ConnectTimings(total=self.clock() - started), None, stage)

        if self._client is None:
            try:
                self._client = self._make_client()
            except (OSError, crt_exceptions.AwsCrtError) as exc:
                return outcome(False, Reason.IDENTITY, f"{self.identity.cert_file}: {exc}", stage="identity")
        self._closing = None
        self._attempt = loop.create_future()
        self._closed = loop.create_future()
        self._stopped = loop.create_future()
        self._client.start()
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                ok, data = await self._attempt
        except TimeoutError:
            await self._stop()
            return outcome(False, Reason.TIMEOUT, f"no CONNACK within {self.options.connect_timeout:g} s")
        if not ok:
            await self._stop()
            reason, detail, code, stage = connack_failure(data)
            return outcome(False, reason, detail, code=code, stage=stage)
        self._connected = True
        connack = data.connack_packet
        return outcome(True, Reason.CONNECTED, code=int(connack.reason_code or 0),
                       session_present=bool(connack.session_present))

    def _succeeded(self, data: crt_mqtt5.LifecycleConnectSuccessData) -> None:
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result((True, data))

    def _failed(self, data: crt_mqtt5.LifecycleConnectFailureData) -> None:
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result((False, data))

    # -------------------------------------------------------------------------------------- ending

    def _lost(self, data: crt_mqtt5.LifecycleDisconnectData) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        was_connected, self._connected = self._connected, False
        if was_connected:
            notice, self._closing = self._closing, None
            if notice is None:
                packet = data.disconnect_packet
                if packet is not None and packet.reason_code is not None:
                    code = int(packet.reason_code)
                    notice = DisconnectNotice("server", packet.reason_string or code_name(5, code), code)
                else:
                    error = data.exception
                    name = getattr(error, "name", "") or ""
                    detail = f"{name}: {getattr(error, 'message', '')}" if name else str(error or "")
                    kind = "tls" if "TLS" in name else "keepalive" if name == "AWS_ERROR_MQTT_TIMEOUT" else "closed"
                    notice = DisconnectNotice(kind, detail)
            if self.on_disconnect is not None:
                self.on_disconnect(notice)
            # one connection per connect(): stop the CRT's own reconnecting
            if self._loop is not None:
                self._loop.create_task(self._stop(), name=f"stop {self._client_id}")

    def _on_stopped(self, data) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _stop(self, packet: crt_mqtt5.DisconnectPacket | None = None) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        stopped = self._stopped
        client.stop(packet)
        if stopped is not None:
            try:
                async with asyncio.timeout(5.0):
                    await stopped
            except TimeoutError:
                pass

    async def disconnect(self) -> None:
        if self._connected:
            self._closing = DisconnectNotice("client")
            self._connected = False
            await self._stop(crt_mqtt5.DisconnectPacket())
            notice, self._closing = self._closing, None
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            if self.on_disconnect is not None and notice is not None:
                self.on_disconnect(notice)
        else:
            await self._stop()

    def abort(self) -> None:
        """A clean DISCONNECT in fact: the CRT cannot drop a connection abruptly. Reported as ``aborted``."""
        if self._connected:
            self._connected = False
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            if self.on_disconnect is not None:
                self.on_disconnect(DisconnectNotice("aborted", "the SDK sent DISCONNECT (it cannot drop a connection)"))
        client, self._client = self._client, None
        if client is not None:
            client.stop()

    # -------------------------------------------------------------------------------------- publish / subscribe

    async def _until_closed(self, future):
        task = asyncio.ensure_future(_crt(future))
        await asyncio.wait({task, self._closed}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
        if task.done():
            return True, task
        task.cancel()
        return False, None

    async def _publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> PublishResult:
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not offered (0 or 1; AWS IoT Core has no QoS 2)")
        if not self._connected or self._client is None:
            return PublishResult(False, "not-connected")
        started = self.clock()
        future = self._client.publish(crt_mqtt5.PublishPacket(topic=topic, payload=payload,
                                                              qos=crt_mqtt5.QoS(qos), retain=retain))
        done, task = await self._until_closed(future)
        latency = self.clock() - started
        if not done or task.exception() is not None:
            return PublishResult(False, "closed", latency=latency)
        if qos == 0:
            return PublishResult(True, "sent")
        puback = task.result().puback
        code = int(puback.reason_code) if puback is not None else 0
        if code >= 0x80:
            return PublishResult(False, "refused", None, code, latency)
        return PublishResult(True, "acked", None, code, latency)

    async def _subscribe(self, *filters: str, qos: int = 1) -> SubscribeResult:
        if not self._connected or self._client is None:
            return SubscribeResult(False, "not-connected")
        started = self.clock()
        packet = crt_mqtt5.SubscribePacket(subscriptions=[crt_mqtt5.Subscription(f, crt_mqtt5.QoS(qos))
                                                          for f in filters])
        done, task = await self._until_closed(self._client.subscribe(packet))
        latency = self.clock() - started
        if not done or task.exception() is not None:
            return SubscribeResult(False, "closed", latency=latency)
        codes = tuple(int(c) for c in task.result().reason_codes)
        ok = all(c < 0x80 for c in codes)
        return SubscribeResult(ok, "granted" if ok else "refused", codes, None, latency)

    # -------------------------------------------------------------------------------------- messages

    def _on_publish(self, data: crt_mqtt5.PublishReceivedData) -> None:  # a CRT thread
        p = data.publish_packet
        self._from_crt(self._inbox_for().put, Publish(p.topic, bytes(p.payload or b""), int(p.qos), bool(p.retain)))

    def _inbox_for(self) -> Inbox:
        if self._inbox is None:
            self._inbox = Inbox(self.options.inbox_size)
        return self._inbox

    def messages(self) -> AsyncIterator[Publish]:
        """Every message of this link's subscriptions, in order of arrival (the CRT does not bound its reading)."""
        return aiter(self._inbox_for())

    def __repr__(self) -> str:
        return f"<AwsIotSdk5Link {self._client_id} {'connected' if self._connected else 'disconnected'}>"
