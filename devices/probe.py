"""A run proves its target before it trusts a refusal: one legitimate device connects -- TCP, TLS with a server
certificate that verifies for the endpoint's name, CONNECT answered by CONNACK accepted -- and disconnects.
The runner probes before the run and again after it; a target that fails either has no verdict
(:class:`~devices.plan.TargetError`, exit 2), whatever the attackers saw.

The probe always goes through the native client, whatever connector the run uses: it reports each stage
precisely (DNS, TCP, TLS, MQTT), so the error says which one failed.
"""

from __future__ import annotations

import asyncio

from devices.client import ClientOptions, ConnectOutcome, Endpoint, Reason
from devices.connectors import get_connector
from devices.evidence import classify_connect
from devices.fleet_devices import close_link
from devices.identity import DeviceIdentity
from devices.plan import FleetError, TargetError
from devices.report import Outcome

PROBE_TIMEOUT = 10.0


def _explain(outcome: ConnectOutcome, where: str, identity: DeviceIdentity) -> str:
    kind, detail = classify_connect(outcome)
    stage = outcome.stage
    if outcome.reason is Reason.DNS:
        return f"{where}: the name does not resolve ({outcome.detail})"
    if outcome.reason is Reason.TCP or stage == "tcp":
        return f"{where} does not answer TCP ({outcome.detail}); is the server running on that port?"
    if outcome.reason is Reason.TIMEOUT:
        return f"{where} did not answer in time ({outcome.detail})"
    if kind is Outcome.INCONCLUSIVE and stage == "tls":
        return (f"{where}: the server's certificate does not verify for {identity.thing_name!r}'s trust anchor "
                f"{identity.ca_file} and the endpoint name ({outcome.detail}); pass --ca-file or --server-name")
    if kind is Outcome.REFUSED_TLS and detail.startswith("closed by the server during the TLS handshake"):
        return (f"{where} accepted TCP but closed the connection during the TLS handshake ({outcome.detail}): is it "
                "a TLS MQTT endpoint?")
    if kind is Outcome.REFUSED_TLS:
        return f"{where} refused the legitimate probe device {identity.thing_name} in TLS ({detail})"
    if kind in (Outcome.REFUSED_MQTT, Outcome.CLOSED):
        return f"{where} refused the legitimate probe device {identity.thing_name} ({detail})"
    return f"{where} does not answer as an MQTT server ({detail})"


async def prove_target(identity: DeviceIdentity, endpoint: Endpoint, *, level: int, when: str = "before the run",
                       refused_for: float = 0.0) -> ConnectOutcome:
    """Connect ``identity`` and disconnect; :class:`TargetError` (or :class:`FleetError` for the probe's own
    files) names what failed. A CONNACK refusal is tried again for ``refused_for`` seconds: an identity
    registered just now may not have reached the target yet."""
    link = get_connector("native").link(identity, endpoint, client_id=identity.thing_name,
                                        options=ClientOptions(protocol_level=level, max_resends=0, keep_alive=30,
                                                              connect_timeout=PROBE_TIMEOUT))
    loop = asyncio.get_running_loop()
    until = loop.time() + refused_for
    while True:
        outcome = await link.connect()
        if outcome.ok:
            await close_link(link)
            return outcome
        kind, _ = classify_connect(outcome)
        if kind is not Outcome.REFUSED_MQTT or loop.time() >= until:
            break
        await asyncio.sleep(0.2)
    if outcome.reason is Reason.IDENTITY:
        raise FleetError(f"the probe device's own files cannot be used: {outcome.detail}")
    where = f"{endpoint.host}:{endpoint.port}"
    raise TargetError(f"{_explain(outcome, where, identity)} ({when}); without a target that answers a legitimate "
                      "device no refusal proves anything")
