"""Devices under test for the qualification tests: four real client stacks with server verification on, and
deliberately broken devices (verification off, a fixed reconnect interval, a small TLS buffer, a silent keep
alive, ...). Turning verification off happens here, in tests, and nowhere in the product.

Each factory returns ``run(endpoint, stop)`` for :class:`gateway.qualify.CoroutineDevice`: connect, do what the
device does, reconnect when the connection ends (each with its own policy), until ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
import warnings
from pathlib import Path

from devices.backoff import Backoff
from devices.client import ClientOptions, DeviceClient
from devices.identity import DeviceFiles, DeviceIdentity
from devices.transport import Endpoint
from gateway.mqtt import Connect, Framer, PingReq, PubAck, Publish, Subscribe, Subscription, decode, encode
from gateway.qualify.clienthello import RecordScanner


async def _first(*awaitables) -> None:
    """Wait until one of them is done; cancel (and await) the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except TimeoutError:
        return stop.is_set()


# --------------------------------------------------------------------------------------------- the project's engine

def native_device(files: DeviceFiles, *, subscribe: str | None = None, publish: str | None = None,
                  backoff: Backoff | None = None, keep_alive: int = 60, connect_timeout: float = 2.0,
                  seed: int = 1, **options):
    """devices.client.DeviceClient: jittered exponential backoff (full jitter, seeded), verification always on."""
    identity = DeviceIdentity.load(files.directory)

    async def run(ep, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        client = DeviceClient(identity, Endpoint(ep.server_name, ep.port),
                              options=ClientOptions(keep_alive=keep_alive, connect_timeout=connect_timeout,
                                                    **options),
                              backoff=backoff or Backoff(base=0.05, cap=1.0, random=random.Random(seed).random),
                              on_disconnect=lambda notice: lost.set())
        client.start()
        try:
            while not stop.is_set():
                await _first(client.wait_connected(), stop.wait())
                if stop.is_set():
                    break
                if subscribe:
                    await client.subscribe(subscribe, qos=1, timeout=2.0)
                if publish:
                    await client.publish(publish, b"21.5", qos=0)
                lost.clear()
                if not client.connected:  # lost before (or while) it subscribed: wait for the next connection
                    continue
                await _first(stop.wait(), lost.wait())
        finally:
            await client.disconnect(timeout=1.0)

    return run


def fixed_interval_device(files: DeviceFiles, interval: float = 0.15, **kw):
    """Broken: reconnects after the same delay every time (no backoff, no jitter)."""
    return native_device(files, backoff=Backoff(base=interval, cap=interval, factor=1.0, jitter="none"), **kw)


# --------------------------------------------------------------------------------------------- paho-mqtt

def paho_device(files: DeviceFiles, client_id: str, *, subscribe: str | None = None, publish: str | None = None,
                check_hostname: bool = True, verify: bool = True, ca_file: Path | None = None,
                manual_ack: bool = False, min_delay: float = 0.1, max_delay: float = 2.0, keepalive: int = 60):
    """paho-mqtt 2 with its own TLS (``tls_set``) and its own reconnect loop (``loop_start``). The broken variants
    use paho's own switches: ``tls_insecure_set(True)`` (no host name check) and ``cert_reqs=CERT_NONE``."""
    import paho.mqtt.client as mqtt

    async def run(ep, stop: asyncio.Event) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             manual_ack=manual_ack)
        client.tls_set(ca_certs=str(ca_file or ep.ca_file) if verify else None, certfile=str(files.cert),
                       keyfile=str(files.key), cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
        if not check_hostname or not verify:
            client.tls_insecure_set(True)
        client.reconnect_delay_set(min_delay, max_delay)

        def on_connect(c, userdata, flags, reason, properties) -> None:
            if not reason.is_failure:
                if subscribe:
                    c.subscribe(subscribe, qos=1)
                if publish:
                    c.publish(publish, b"21.5", qos=0)

        client.on_connect = on_connect
        client.connect_async(ep.server_name, ep.port, keepalive=keepalive)
        client.loop_start()
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(_paho_stop, client)

    return run


def _paho_stop(client) -> None:
    client.disconnect()
    client.loop_stop()


# --------------------------------------------------------------------------------------------- aiomqtt

def aiomqtt_device(files: DeviceFiles, client_id: str, *, subscribe: str | None = None, publish: str | None = None,
                   base: float = 0.05, cap: float = 1.0, seed: int = 2):
    """aiomqtt 2 (paho inside) with a verifying SSLContext; aiomqtt does not reconnect, so the application loop
    does, with full jitter (the pattern aiomqtt's documentation shows, plus backoff)."""
    import aiomqtt

    rng = random.Random(seed)

    async def run(ep, stop: asyncio.Event) -> None:
        ctx = ssl.create_default_context(cafile=ep.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(files.cert), str(files.key))
        delay = base
        while not stop.is_set():
            try:
                async with aiomqtt.Client(ep.server_name, ep.port, identifier=client_id, tls_context=ctx,
                                          timeout=2.0) as client:
                    delay = base
                    if subscribe:
                        await client.subscribe(subscribe, qos=1)
                    if publish:
                        await client.publish(publish, b"21.5", qos=0)

                    async def consume() -> None:
                        async for _ in client.messages:
                            pass

                    await _first(consume(), stop.wait())
            except aiomqtt.MqttError:
                if await _sleep_or_stop(stop, rng.uniform(0, delay)):
                    return
                delay = min(cap, delay * 2)

    return run


# --------------------------------------------------------------------------------------------- awsiotsdk

def awsiotsdk_device(files: DeviceFiles, client_id: str, *, subscribe: str | None = None,
                     publish: str | None = None, base: float = 0.05, cap: float = 1.0, seed: int = 3,
                     min_tls12: bool = False):
    """The AWS IoT Device SDK v2 (aws-crt, s2n): ``mqtt_connection_builder.mtls_from_path`` as AWS's samples use
    it. A failed first connect is retried by the application (the CRT reconnects only established connections).

    ``min_tls12``: the builder has no minimum-version option, so the connection is built from awscrt's public
    TlsContextOptions with ``min_tls_ver = TLSv1_2`` (what a device must do to refuse TLS 1.0/1.1)."""
    from awscrt import io as crt_io
    from awscrt import mqtt as crt_mqtt
    from awsiot import mqtt_connection_builder

    rng = random.Random(seed)

    def build(ep):
        if not min_tls12:
            return mqtt_connection_builder.mtls_from_path(
                endpoint=ep.server_name, port=ep.port, cert_filepath=str(files.cert), pri_key_filepath=str(files.key),
                ca_filepath=ep.ca_file, client_id=client_id, clean_session=True, keep_alive_secs=30,
                ping_timeout_ms=3000, tcp_connect_timeout_ms=2000, enable_metrics_collection=False)
        options = crt_io.TlsContextOptions.create_client_with_mtls_from_path(str(files.cert), str(files.key))
        options.override_default_trust_store_from_path(None, ep.ca_file)
        options.min_tls_ver = crt_io.TlsVersion.TLSv1_2
        client = crt_mqtt.Client(crt_io.ClientBootstrap.get_or_create_static_default(),
                                 crt_io.ClientTlsContext(options))
        return crt_mqtt.Connection(client, ep.server_name, ep.port, client_id, clean_session=True,
                                   keep_alive_secs=30, ping_timeout_ms=3000)

    async def settle(future, timeout: float):
        """Await a CRT future without ever cancelling it (the CRT resolves it itself, later if need be)."""
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when abandoned
        done, _ = await asyncio.wait({wrapped}, timeout=timeout)
        if not done:
            raise TimeoutError
        return wrapped.result()

    async def run(ep, stop: asyncio.Event) -> None:
        delay = base
        while not stop.is_set():
            connection = build(ep)
            try:
                await settle(connection.connect(), 60.0)
            except Exception:  # noqa: BLE001 - a refused or failed connect: retry with backoff
                if await _sleep_or_stop(stop, rng.uniform(0, delay)):
                    return
                delay = min(cap, delay * 2)
                continue
            delay = base
            try:
                if subscribe:
                    future, _ = connection.subscribe(subscribe, crt_mqtt.QoS.AT_LEAST_ONCE,
                                                     callback=lambda topic, payload, **kw: None)
                    await settle(future, 3.0)
                if publish:
                    future, _ = connection.publish(publish, b"21.5", crt_mqtt.QoS.AT_MOST_ONCE)
                    await settle(future, 3.0)
                await stop.wait()
            except Exception:  # noqa: BLE001 - the endpoint ended the connection
                pass
            finally:
                try:
                    await settle(connection.disconnect(), 3.0)
                except Exception:  # noqa: BLE001
                    pass

    return run


# --------------------------------------------------------------------------------------------- raw devices

def tls_context(files: DeviceFiles | None, ca_file: str, *, check_hostname: bool = True, verify: bool = True,
                minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2, maximum: ssl.TLSVersion | None = None,
                ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if verify:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.check_hostname = check_hostname and verify
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


class RawDevice:
    """A hand-written device on the project's codec, for behaviours no library produces on purpose.

    ``record_limit``: abort the connection when a TLS record longer than this arrives (an embedded TLS stack with a
    small input buffer). ``connect=None``: complete TLS and never send CONNECT. ``after_connack``: packets sent once
    connected. ``ack_qos1=False``: never acknowledge a QoS 1 message. ``ping=False``: never send PINGREQ.
    """

    def __init__(self, files: DeviceFiles | None, client_id: str = "raw", *, context_args: dict | None = None,
                 record_limit: int | None = None, send_connect: bool = True, keep_alive: int = 60,
                 after_connack: tuple = (), ack_qos1: bool = True, ping: bool = True, retry: float = 0.1) -> None:
        self.files = files
        self.client_id = client_id
        self.context_args = context_args or {}
        self.record_limit = record_limit
        self.send_connect = send_connect
        self.keep_alive = keep_alive
        self.after_connack = after_connack
        self.ack_qos1 = ack_qos1
        self.ping = ping
        self.retry = retry

    async def __call__(self, ep, stop: asyncio.Event) -> None:
        ctx = tls_context(self.files, ep.ca_file, **self.context_args)
        while not stop.is_set():
            try:
                await self._once(ep, ctx, stop)
            except (OSError, ssl.SSLError, ConnectionError, _Overflow):
                pass
            if await _sleep_or_stop(stop, self.retry):
                return

    async def _once(self, ep, ctx: ssl.SSLContext, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in ep.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (ep.host, ep.port))
            link = _RawTLS(sock, ctx, ep.server_name, self.record_limit)
            await link.handshake()
            if not self.send_connect:
                await stop.wait()
                return
            await link.write(encode(Connect(self.client_id, keep_alive=self.keep_alive)))
            framer = Framer(1 << 20, protocol_level=4)
            last_write = time.monotonic()
            while not stop.is_set():
                timeout = 0.2
                if self.ping and self.keep_alive:
                    timeout = max(0.01, min(timeout, last_write + self.keep_alive * 0.8 - time.monotonic()))
                try:
                    data = await asyncio.wait_for(link.read(), timeout)
                except TimeoutError:
                    if self.ping and self.keep_alive and time.monotonic() - last_write >= self.keep_alive * 0.8:
                        await link.write(encode(PingReq(), 4))
                        last_write = time.monotonic()
                    continue
                if not data:
                    return
                for frame in framer.feed(data):
                    packet = decode(frame, 4)
                    if packet.__class__.__name__ == "Connack":
                        for out in self.after_connack:
                            await link.write(encode(out, 4))
                        last_write = time.monotonic()
                    elif isinstance(packet, Publish) and packet.qos == 1 and self.ack_qos1:
                        await link.write(encode(PubAck(packet.packet_id), 4))
                        last_write = time.monotonic()
        finally:
            sock.close()


class _Overflow(Exception):
    pass


class _RawTLS:
    def __init__(self, sock, ctx: ssl.SSLContext, server_name: str, record_limit: int | None) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self.record_limit = record_limit
        self.records = RecordScanner()

    async def _recv(self) -> bytes:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if data and self.record_limit is not None:
            for _, length in self.records.feed(data):
                if length > self.record_limit:
                    raise _Overflow(f"TLS record of {length} bytes exceeds the {self.record_limit}-byte buffer")
        return data

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await asyncio.get_running_loop().sock_sendall(self.sock, self.outgoing.read())

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                await self._flush()
                return
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._recv()
                if not data:
                    raise ConnectionError("closed during the handshake")
                self.incoming.write(data)

    async def read(self) -> bytes:
        while True:
            try:
                return self.ssl.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._recv()
                if not data:
                    return b""
                self.incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def write(self, data: bytes) -> None:
        self.ssl.write(data)
        await self._flush()


def subscribe_packet(topic: str, qos: int = 1) -> Subscribe:
    return Subscribe(1, (Subscription(topic, qos),))


def publish_packet(topic: str, qos: int = 0) -> Publish:
    return Publish(topic, b"x", qos=qos, packet_id=1 if qos else None)
