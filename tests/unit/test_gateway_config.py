"""Gateway configuration: defaults from AWS IoT's quotas, the TOML file, overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "iotgate.toml"
    path.write_text(text)
    return path


def test_defaults_follow_aws_iot(tmp_path):
    cfg = load_config(tmp_path)
    lim = cfg.limits
    assert (cfg.host, cfg.port, cfg.upstream) == ("127.0.0.1", 8883, "mqtts://127.0.0.1:8884")
    assert (lim.handshake_timeout, lim.connect_timeout) == (10.0, 10.0)
    assert (lim.keepalive_min, lim.keepalive_max) == (30, 1200)
    assert lim.max_payload == 128 * 1024
    assert (lim.connect_rate_per_client_id, lim.publish_rate, lim.max_subscriptions) == (1.0, 100.0, 50)
    assert cfg.registry_url.startswith("sqlite:///") and cfg.registry_url.endswith("registry.db")


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, """
[gateway]
port = 9883
upstream = "unix:///run/iotgate/mqtt.sock"

[limits]
max_connections = 50
handshake_timeout = 2.5

[observe]
access_log = "-"
stats_file = "stats/s.json"
""")
    cfg = load_config(tmp_path, path, port=10883, host=None)
    assert cfg.port == 10883  # the CLI wins over the file
    assert cfg.limits.max_connections == 50 and cfg.limits.handshake_timeout == 2.5
    assert cfg.access_log_target == "-"
    assert cfg.stats_path == tmp_path / "stats" / "s.json"
    assert cfg.password_file == Path("/run/iotgate/gateway.secret")  # beside the socket


@pytest.mark.parametrize("text,message", [
    ("[limits]\nmax_conections = 3\n", "limits.max_conections: unknown key; did you mean 'max_connections'?"),
    ("[limit]\n", "unknown section 'limit'; did you mean 'limits'?"),
    ("[gateway]\nport = 70000\n", "gateway.port must be a TCP port number 1..65535, got 70000"),
    ("[gateway]\nport = \"8883\"\n", "gateway.port must be a TCP port number"),
    ("[limits]\nhandshake_timeout = 0\n", "limits.handshake_timeout must be a number > 0"),
    ("[limits]\nmax_subscriptions = -1\n", "limits.max_subscriptions must be a whole number >= 0"),
    ("[limits]\nkeepalive_min = 100\nkeepalive_max = 60\n", "keepalive_min (100) is above keepalive_max (60)"),
    ("[gateway]\nupstream = \"mqtt://127.0.0.1:1883\"\n", "gateway.upstream (--upstream) 'mqtt://127.0.0.1:1883': plaintext"),
    ("[gateway\n", "not valid TOML"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "iotgate.toml") in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path, tmp_path / "nope.toml")


@pytest.mark.parametrize("text,message", [
    ("[limits]\nmax_rate_keys = 0\n", "limits.max_rate_keys must be at least 1, got 0"),
    ("[limits]\nmax_device_buffer = 1024\n", "limits.max_device_buffer (1024) is below max_packet_size"),
])
def test_values_that_would_break_the_listener_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, write(tmp_path, text))
    assert message in str(err.value)


def test_proxy_protocol_and_staleness_keys(tmp_path):
    cfg = load_config(tmp_path, write(tmp_path, """
[gateway]
proxy_protocol = true
trusted_proxies = ["10.0.0.0/24", "192.0.2.7"]

[limits]
registry_max_staleness = 12.5
"""))
    assert cfg.proxy_protocol and cfg.trusted_proxies == ("10.0.0.0/24", "192.0.2.7")
    assert cfg.limits.registry_max_staleness == 12.5
    assert not load_config(tmp_path).proxy_protocol and load_config(tmp_path).limits.registry_max_staleness == 30.0


@pytest.mark.parametrize("text,message", [
    ("[gateway]\nproxy_protocol = true\n", "trusted_proxies is empty"),
    ("[gateway]\nproxy_protocol = 1\n", "gateway.proxy_protocol must be true or false"),
    ("[gateway]\ntrusted_proxies = \"10.0.0.1\"\n", "gateway.trusted_proxies must be a list"),
    ("[gateway]\ntrusted_proxies = [\"10.0.0.300\"]\n", "'10.0.0.300' is not an IP address"),
    ("[limits]\nregistry_max_staleness = 0\n", "limits.registry_max_staleness must be a number > 0"),
])
def test_proxy_protocol_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, write(tmp_path, text))
