"""The supervisor's summed stats document, as a table: counters add up, times and the registry change counter
do not, the first worker names the listener."""

from gateway.workers import sum_stats

W0 = {"time": 100.0, "pid": 11, "started": 10.0, "uptime_seconds": 90.0, "listen": "127.0.0.1:8883",
      "upstream": "mqtts://127.0.0.1:8884", "state": "running", "worker": 0, "connections_open": 3,
      "sessions_active": 2, "connections": {"accepted": 5, "refused": 1},
      "refused_by_reason": {"certificate_revoked": 1}, "denied": {"publish": {"publish_denied": 2}},
      "messages": {"device_to_upstream": 7}, "registry_change_counter": 40, "registry_reloads": 1}
W1 = {"time": 101.0, "pid": 12, "started": 9.0, "uptime_seconds": 92.0, "listen": "127.0.0.1:8883",
      "upstream": "mqtts://127.0.0.1:8884", "state": "running", "worker": 1, "connections_open": 4,
      "sessions_active": 4, "connections": {"accepted": 6, "refused": 0},
      "refused_by_reason": {"unknown_ca": 2}, "denied": {"publish": {"publish_denied": 1}, "subscribe": {"x": 1}},
      "messages": {"device_to_upstream": 1, "upstream_to_device": 9}, "registry_change_counter": 38,
      "registry_reloads": 1}

CASES = [
    ("connections_open", 7), ("sessions_active", 6), ("connections", {"accepted": 11, "refused": 1}),
    ("refused_by_reason", {"certificate_revoked": 1, "unknown_ca": 2}),
    ("denied", {"publish": {"publish_denied": 3}, "subscribe": {"x": 1}}),
    ("messages", {"device_to_upstream": 8, "upstream_to_device": 9}), ("registry_reloads", 2),
    ("registry_change_counter", 40), ("started", 9.0), ("uptime_seconds", 92.0),
    ("listen", "127.0.0.1:8883"), ("pid", 11),
]


def test_sum_stats_table():
    merged = sum_stats([W0, W1])
    for key, want in CASES:
        assert merged[key] == want, key
    assert "worker" not in merged


def test_sum_of_nothing_is_empty():
    assert sum_stats([]) == {}


# --------------------------------------------------------------------------------------------- /metrics

def _worker_text(worker: int, connections: int, messages: int, staleness: float, started: float,
                 forwards: list[float]) -> str:
    """What a worker writes: a real Metrics object's exposition."""
    from gateway.observe.metrics import Metrics
    m = Metrics(clock=lambda: started, worker=worker)
    m.gauges.update(connections_open=connections, registry_staleness_seconds=staleness)
    m.messages["device_to_upstream"] = messages
    for seconds in forwards:
        m.forward_seconds.observe(seconds)
    return m.prometheus().decode()


P0 = _worker_text(0, 3, 7, 0.5, 20.0, [0.002, 0.004, 0.3])
P1 = _worker_text(1, 4, 1, 2.5, 10.0, [0.001, 0.009, 0.7])


def _samples(text: bytes) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


METRIC_CASES = [
    (("iotgate_connections_open", ()), 7.0),
    (("iotgate_messages_total", (("direction", "device_to_upstream"),)), 8.0),
    (("iotgate_registry_staleness_seconds", ()), 2.5),  # the worst
    (("iotgate_start_time_seconds", ()), 10.0),  # the earliest
    (("iotgate_forward_seconds_count", ()), 6.0),
    (("iotgate_forward_seconds_bucket", (("le", "0.01"),)), 4.0),
    (("iotgate_forward_seconds_bucket", (("le", "+Inf"),)), 6.0),
    (("iotgate_worker_connections_open", (("worker", "0"),)), 3.0),
    (("iotgate_worker_connections_open", (("worker", "1"),)), 4.0),
    (("iotgate_worker_messages_total", (("direction", "device_to_upstream"), ("worker", "1"))), 1.0),
    (("iotgate_worker_messages_total", (("direction", "device_to_upstream"), ("worker", "0"))), 7.0),
    (("iotgate_worker_registry_staleness_seconds", (("worker", "1"),)), 2.5),
    (("iotgate_workers", ()), 2.0),
]


def test_sum_metrics_table():
    from gateway.workers import sum_metrics
    got = _samples(sum_metrics([P0, P1], extra={"iotgate_workers": ("gauge", 2)}))
    for key, want in METRIC_CASES:
        assert got.get(key) == want, key
    # every family keeps its type through the sum (a counter's TYPE line names its _total, as prometheus-client's)
    from prometheus_client.parser import text_string_to_metric_families
    text = sum_metrics([P0, P1]).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["iotgate_messages"] == types["iotgate_worker_messages"] == "counter"
    assert types["iotgate_forward_seconds"] == "histogram" and "unknown" not in types.values()
    # only the named families are repeated per worker
    assert not any(name.startswith("iotgate_worker_start") or name.startswith("iotgate_worker_forward")
                   for name, _ in got)
