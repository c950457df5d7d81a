"""A registry outage: the gateway serves from its view within registry_max_staleness (live sessions and new
ones), refuses new connections past it (fail closed), keeps its live sessions, and recovers when the registry
answers again. The registry is a real PostgreSQL reached through a relay the test cuts."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from devices.provisioning import register_certificate, register_own_cas
from devices.reference import PahoDevice
from gateway.registry import Registry

from .conftest import ROOM_POLICY, start_gateway, wait_until
from .relay import Relay

pytestmark = pytest.mark.postgres


def pg_device(fleet, reg: Registry, prefix: str):
    """A device of the shared fleet, registered in ``reg`` as well."""
    from cryptography import x509

    thing, files, _ = fleet.device(prefix)
    pem = files.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    cert_id = register_certificate(reg, thing, cert, pem, fleet.store.load_issuer().ca_id, ("room",))
    return thing, files, cert_id


@pytest.fixture
def pg_registry(postgres_url, fleet):
    reg = Registry.open(postgres_url)
    register_own_cas(reg, fleet.store)
    reg.create_policy("room", ROOM_POLICY)
    yield reg
    reg.close()


def test_outage_within_and_past_the_staleness_bound(fleet, broker, pg_registry, postgres_url):
    url = make_url(postgres_url)
    relay = Relay((url.host, url.port or 5432))
    relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    running = start_gateway(fleet, broker.config.url, settings={"registry": relayed}, registry_max_staleness=3.0)
    made = []

    def device(thing, files):
        d = PahoDevice(files, running.port, thing, version=5)
        made.append(d)
        return d

    try:
        a = pg_device(fleet, pg_registry, "pg-live")
        b = pg_device(fleet, pg_registry, "pg-within")
        c = pg_device(fleet, pg_registry, "pg-past")
        running.sync(pg_registry)
        live = device(*a[:2])
        assert live.connect() == 0
        gauges = running.gateway.metrics.gauges

        relay.cut()
        wait_until(lambda: gauges.get("registry_available") == 0, timeout=5)
        assert not running.gateway.watcher.refusing()
        assert device(*b[:2]).connect() == 0  # within the bound: judged on the last view
        wait_until(lambda: gauges.get("registry_refusing") == 1, timeout=8)
        assert gauges["registry_staleness_seconds"] > 3.0
        with pytest.raises(OSError):  # past it: refused before TLS, not admitted on an old view
            device(*c[:2]).connect()
        record = running.events.wait_for(kind="registry_unavailable")
        assert record["decision"] == "refused" and "registry_max_staleness" in record["reason"]
        assert live.publish("room/outage", b"still here", qos=1) == 0  # the live session was kept

        relay.restore()
        wait_until(lambda: gauges.get("registry_available") == 1 and gauges.get("registry_refusing") == 0,
                   timeout=10)
        assert device(*c[:2]).connect() == 0
        prom = running.gateway.metrics.prometheus().decode()
        assert "iotgate_registry_staleness_seconds" in prom and "iotgate_registry_refusing 0.0" in prom
    finally:
        for d in made:
            d.close()
        running.thread.stop()
        relay.close()
