"""What the gateway shows: the JSON access log, counters (stats file, Prometheus text), a local HTTP endpoint."""

from gateway.observe.access import AccessLog, timestamp
from gateway.observe.metrics import Metrics

__all__ = ["AccessLog", "Metrics", "timestamp"]
