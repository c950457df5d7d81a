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
