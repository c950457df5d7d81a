"""Counters and gauges of the gateway, as a stats JSON document and as Prometheus text exposition.

Every access-log event is counted by (event, decision, kind): accepted and refused connections by reason,
denied publishes / subscriptions / deliveries by reason. Message counters and gauges come from the server.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.events: Counter[tuple[str, str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.gauges: dict[str, float] = {"connections_open": 0, "sessions_active": 0}
        self.info: dict[str, str] = {}
        self.registry_reloads = 0
        self.tls_context_rebuilds = 0

    def observe(self, event: dict) -> None:
        self.events[(event.get("event") or "", event.get("decision") or "", event.get("kind") or "")] += 1

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
            "tls_context_rebuilds": self.tls_context_rebuilds,
        }

    def prometheus(self) -> str:
        lines = [
            "# HELP iotgate_access_events_total Access-log events by event, decision and kind.",
            "# TYPE iotgate_access_events_total counter",
        ]
        for (event, decision, kind), n in sorted(self.events.items()):
            lines.append(f'iotgate_access_events_total{{event="{_esc(event)}",decision="{_esc(decision)}",'
                         f'kind="{_esc(kind)}"}} {n}')
        lines += ["# HELP iotgate_messages_total Messages forwarded by direction.",
                  "# TYPE iotgate_messages_total counter"]
        for direction, n in sorted(self.messages.items()):
            lines.append(f'iotgate_messages_total{{direction="{_esc(direction)}"}} {n}')
        for name, value in sorted(self.gauges.items()):
            lines += [f"# TYPE iotgate_{name} gauge", f"iotgate_{name} {value:g}"]
        lines += ["# TYPE iotgate_registry_reloads_total counter", f"iotgate_registry_reloads_total {self.registry_reloads}",
                  "# TYPE iotgate_tls_context_rebuilds_total counter",
                  f"iotgate_tls_context_rebuilds_total {self.tls_context_rebuilds}",
                  "# TYPE iotgate_start_time_seconds gauge", f"iotgate_start_time_seconds {self.started:.3f}"]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
