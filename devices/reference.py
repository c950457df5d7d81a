"""A reference device on paho-mqtt 2: one identity, callbacks turned into waitable queues."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from devices.identity import DeviceFiles

WAIT = 5.0


class ClosedBeforeConnack(ConnectionError):
    """The server closed the connection after CONNECT, before any CONNACK (how a refusal can look)."""


class PahoDevice:
    """A paho-mqtt device with its own identity; callbacks turned into waitable queues. No auto-reconnect.

    The reference client: what the gateway's behaviour is checked against, in the tests and in the demo.
    ``files=None`` connects without a client certificate (to show that refusal).
    """

    def __init__(self, files: DeviceFiles | None, port: int, client_id: str, *, version: int = 5,
                 clean: bool = True, keepalive: int = 60, will: tuple | None = None, host: str = "localhost",
                 ca_file: Path | None = None) -> None:
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kwargs = {} if version == 5 else {"clean_session": clean}
        # paho's own network thread (loop_start) is what makes publish() from another thread safe: it only
        # queues, and the network thread alone touches the TLS socket. No reconnect: a refusal stays visible.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  reconnect_on_failure=False, **kwargs)
        if files is not None:
            self.client.tls_set(ca_certs=str(files.root_ca), certfile=str(files.cert), keyfile=str(files.key))
        elif ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self.host = host
        self.port = port
        self.version = version
        self.clean = clean
        self.connack_flags = None
        self.keepalive = keepalive
        self.messages: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.acks: dict[int, queue.Queue] = {}
        self.subacks: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._started = False
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self.connack.put((rc.value, flags, props))
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.disconnects.put(rc.value)
        c.on_message = lambda cl, ud, msg: self.messages.put(msg)
        c.on_publish = lambda cl, ud, mid, rc, props: self._queue(self.acks, mid).put(rc.value)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self._queue(self.subacks, mid).put([r.value for r in rcs])

    def _queue(self, table: dict, mid: int) -> queue.Queue:
        with self._lock:
            return table.setdefault(mid, queue.Queue())

    def connect(self, timeout: float = WAIT, *, properties: Properties | None = None) -> int:
        """The CONNACK reason (paho's MQTT 5 numbering, also for 3.1.1), or raises if the link dropped first.
        ``clean`` is MQTT 5's Clean Start too; ``properties`` are the MQTT 5 CONNECT properties. The CONNACK's
        flags (``session_present``) and properties are kept in ``connack_flags`` / ``connack_properties``."""
        kwargs = {} if self.version != 5 else {"clean_start": self.clean, "properties": properties}
        self.client.connect(self.host, self.port, keepalive=self.keepalive, **kwargs)
        self.client.loop_start()
        self._started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rc, flags, props = self.connack.get(timeout=0.05)
                self.connack_flags = flags
                self.connack_properties = props
                return rc
            except queue.Empty:
                if not self.disconnects.empty():
                    raise ClosedBeforeConnack(f"disconnected before CONNACK ({self.disconnects.get()})")
        raise TimeoutError(f"no CONNACK within {timeout:g} s")

    def subscribe(self, topic: str, qos: int = 1, timeout: float = WAIT, *,
                  options: mqtt.SubscribeOptions | None = None) -> list[int]:
        """Subscribe and wait for the SUBACK's reason codes; ``options`` (MQTT 5) replace ``qos``."""
        result, mid = self.client.subscribe(topic, qos=qos) if options is None else \
            self.client.subscribe(topic, options=options)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self._queue(self.subacks, mid).get(timeout=timeout)

    def subscribe_many(self, topics: list[tuple[str, int]], timeout: float = WAIT) -> list[int]:
        result, mid = self.client.subscribe(topics)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self._queue(self.subacks, mid).get(timeout=timeout)

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 0, retain: bool = False,
                timeout: float = WAIT) -> int | None:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return None
        return self._queue(self.acks, info.mid).get(timeout=timeout)

    def publish_nowait(self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False):
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def message(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def no_message(self) -> bool:
        return self.messages.empty()

    def wait_disconnect(self, timeout: float = WAIT) -> int:
        return self.disconnects.get(timeout=timeout)

    def disconnect(self, properties: Properties | None = None) -> None:
        self.client.disconnect(properties=properties)

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing in teardown
            pass
        if self._started:
            self.client.loop_stop()
            self._started = False
        sock = self.client.socket()
        if sock is not None:
            sock.close()
