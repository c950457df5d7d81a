"""Counters and gauges of the gateway, as a stats JSON document and as Prometheus text exposition.

Every access-log event is counted by (event, decision, kind): accepted and refused connections by reason,
denied publishes / subscriptions / deliveries by reason. Message counters and gauges come from the server.
Authorization decisions by action and outcome, and the allowed packets and bytes per action, are counted from the
same events (a session's allowed flows when it ends), so /metrics and the access log always agree. Histograms time
the device's TLS handshake, the CONNACK after it and the forwarding round trip of QoS 1 publishes. The
``iotgate_worker_*`` families repeat the load and registry view with the worker's number, so a node's summed
/metrics (gateway.workers) still shows each worker.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PROM_CONTENT_TYPE = CONTENT_TYPE_LATEST
FORWARD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.time, worker: int = 0) -> None:
        self.clock = clock
        self.worker = str(worker)  # the label of the iotgate_worker_* series (0 for a gateway without workers)
        self.started = clock()
        self.events: Counter[tuple[str, str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.gauges: dict[str, float] = {"connections_open": 0, "sessions_active": 0}
        self.info: dict[str, str] = {}
        self.registry_reloads = 0
        self.tls_context_rebuilds = 0
        self.registry_version = 0
        self.decisions: Counter[tuple[str, str]] = Counter()  # (action, outcome)
        self.flow_packets: Counter[str] = Counter()  # allowed packets by action
        self.flow_bytes: Counter[str] = Counter()
        self.upstream_tls = None  # the upstream's SessionStore (gateway.auth.tls_engine) where sessions are resumed
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.handshake_seconds = Histogram("iotgate_tls_handshake_seconds", "Completed device TLS handshakes.",
                                           buckets=HANDSHAKE_BUCKETS, registry=self.registry)
        self.connack_seconds = Histogram(
            "iotgate_connack_seconds", "Accepted sessions: from the end of the device's TLS handshake to its "
            "CONNACK (the CONNECT, certificate status, policy, the upstream session).",
            buckets=HANDSHAKE_BUCKETS, registry=self.registry)
        self.forward_seconds = Histogram(
            "iotgate_forward_seconds", "Forwarding round trip: from a device's QoS 1 PUBLISH to the broker's PUBACK "
            "relayed for it (decision, upstream hop, the broker, the way back).",
            buckets=FORWARD_BUCKETS, registry=self.registry)

    def observe(self, event: dict) -> None:
        decision = event.get("decision") or ""
        self.events[(event.get("event") or "", decision, event.get("kind") or "")] += 1
        action = event.get("action")
        if action and decision in ("allowed", "denied", "refused", "throttled"):
            self.decisions[(action, "allowed" if decision == "allowed" else "denied")] += 1
        for row in event.get("flows") or ():
            name = row.get("action") or "other"
            self.decisions[(name, "allowed")] += row["count"]
            self.flow_packets[name] += row["count"]
            self.flow_bytes[name] += row["bytes"]

    # ------------------------------------------------------------------ views

    def stats(self) -> dict:
        """The stats document (written to the stats file, served at /stats)."""
        accepted = refused = 0
        refused_by: Counter[str] = Counter()
        denied: dict[str, Counter[str]] = {}
        disconnects: Counter[str] = Counter()
        for (event, decision, kind), n in self.events.items():
            if event == "connect" and decision == "allowed":
                accepted += n
            elif event in ("tls", "connect"):
                refused += n
                refused_by[kind] += n
            elif event == "disconnect":
                disconnects[kind] += n
            elif decision in ("denied", "throttled"):
                denied.setdefault(event, Counter())[kind] += n
        now = self.clock()
        return {
            "time": now,
            "pid": os.getpid(),
            "started": self.started,
            "uptime_seconds": round(now - self.started, 3),
            **self.info,
            "connections_open": int(self.gauges["connections_open"]),
            "sessions_active": int(self.gauges["sessions_active"]),
            "connections": {"accepted": accepted, "refused": refused},
            "refused_by_reason": dict(sorted(refused_by.items())),
            "denied": {event: dict(sorted(c.items())) for event, c in sorted(denied.items())},
            "disconnects_by_reason": dict(sorted(disconnects.items())),
            "messages": dict(sorted(self.messages.items())),
            "registry_reloads": self.registry_reloads,
            "registry_change_counter": int(self.gauges.get("registry_change_counter", -1)),
            "tls_context_rebuilds": self.tls_context_rebuilds,
        }

    def prometheus(self) -> bytes:
        """Prometheus text exposition (prometheus-client renders it)."""
        return generate_latest(self.registry)


class _Collector(Collector):
    """Exposes a Metrics object's current values at each scrape; nothing is copied in between."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        events = CounterMetricFamily("iotgate_access_events", "Access-log events by event, decision and kind.",
                                     labels=["event", "decision", "kind"])
        for (event, decision, kind), n in sorted(m.events.items()):
            events.add_metric([event, decision, kind], n)
        yield events
        messages = CounterMetricFamily("iotgate_messages", "Messages forwarded by direction.", labels=["direction"])
        for direction, n in sorted(m.messages.items()):
            messages.add_metric([direction], n)
        yield messages
        for name, value in sorted(m.gauges.items()):
            yield GaugeMetricFamily(f"iotgate_{name}", f"Current {name.replace('_', ' ')}.", value=value)
        yield CounterMetricFamily("iotgate_registry_reloads", "Registry snapshots applied.", value=m.registry_reloads)
        yield CounterMetricFamily("iotgate_tls_context_rebuilds", "Server TLS contexts rebuilt (CA set changed).",
                                  value=m.tls_context_rebuilds)
        yield GaugeMetricFamily("iotgate_start_time_seconds", "Start time of the gateway, Unix seconds.",
                                value=m.started)
        decisions = CounterMetricFamily("iotgate_authorization_decisions",
                                        "Policy decisions by action and outcome (allowed ones counted when the "
                                        "session ends).", labels=["action", "outcome"])
        for (action, outcome), n in sorted(m.decisions.items()):
            decisions.add_metric([action, outcome], n)
        yield decisions
        packets = CounterMetricFamily("iotgate_flow_packets", "Allowed packets by action (iot:Publish: device to "
                                      "broker, iot:Receive: broker to device), counted when the session ends.",
                                      labels=["action"])
        sizes = CounterMetricFamily("iotgate_flow_bytes", "Bytes of the allowed packets by action.", labels=["action"])
        for action in sorted(m.flow_packets):
            packets.add_metric([action], m.flow_packets[action])
            sizes.add_metric([action], m.flow_bytes[action])
        yield packets
        yield sizes
        yield GaugeMetricFamily("iotgate_registry_version", "The registry change counter of the gateway's view.",
                                value=m.registry_version)
        if m.upstream_tls is not None:
            handshakes = CounterMetricFamily("iotgate_upstream_tls_handshakes", "The gateway's TLS handshakes with "
                                             "the broker, full or resuming its session.", labels=["session"])
            handshakes.add_metric(["full"], m.upstream_tls.full)
            handshakes.add_metric(["resumed"], m.upstream_tls.resumed)
            yield handshakes
        yield from self._per_worker()

    def _per_worker(self):
        """The load and the registry view of this worker process, labelled with its number: a node's workers add
        up in the families above and stay apart in these."""
        m = self.metrics
        for name in ("connections_open", "sessions_active", "registry_staleness_seconds"):
            if name in m.gauges:
                family = GaugeMetricFamily(f"iotgate_worker_{name}", f"Current {name.replace('_', ' ')}, per "
                                           "worker process.", labels=["worker"])
                family.add_metric([m.worker], m.gauges[name])
                yield family
        version = GaugeMetricFamily("iotgate_worker_registry_version", "The registry change counter of the "
                                    "worker's view.", labels=["worker"])
        version.add_metric([m.worker], m.registry_version)
        yield version
        messages = CounterMetricFamily("iotgate_worker_messages", "Messages forwarded by direction, per worker "
                                       "process.", labels=["worker", "direction"])
        for direction, n in sorted(m.messages.items()):
            messages.add_metric([m.worker, direction], n)
        yield messages
        accepted = sum(n for (event, decision, _), n in m.events.items()
                       if event == "connect" and decision == "allowed")
        connects = CounterMetricFamily("iotgate_worker_connections_accepted", "Accepted device sessions, per worker "
                                       "process.", labels=["worker"])
        connects.add_metric([m.worker], accepted)
        yield connects
