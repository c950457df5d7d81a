"""`iotgate qualify`'s endpoint against real devices: the project's device engine, paho-mqtt, aiomqtt and awsiotsdk
with server verification on must pass the TLS cases; for every case a deliberately broken device must fail it (or,
where the endpoint cannot judge, get an error: never a pass).

Timings are the suites' with short timeouts and fast backoffs; nothing sleeps to wait for readiness (devices are
awaited through the endpoint's own connection queue)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import ssl
from pathlib import Path

import pytest

from devices.backoff import Backoff
from gateway.auth import AuthView
from gateway.qualify import (ContextFactory, CoroutineDevice, PolicySource, Qualification, RunResult,
                             ServerProfiles, Verdict, load_suite, parse_suite)
from gateway.qualify.device import CommandDevice, ExternalDevice
from devices.provisioning import DEFAULT_POLICY_NAME
from tests.qualify_devices import (RawDevice, aiomqtt_device, awsiotsdk_device, fixed_interval_device,
                                   native_device, paho_device, publish_packet, subscribe_packet)

FAST = {"connect_timeout": 5.0, "handshake_timeout": 3.0, "packet_timeout": 3.0}
TLS_ONLY = [c.id for c in load_suite("tls-only").cases]

# A least-privilege policy with an explicit Deny: dt/<thing>/secret is refused by Statement[2].
SENSOR_POLICY = """{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/dt/*/secret"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/cmd/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/cmd/${iot:Connection.Thing.ThingName}/*"}
  ]
}"""


@dataclasses.dataclass
class Env:
    fleet: object
    profiles: ServerProfiles
    tmp: Path

    def device(self, policies=(DEFAULT_POLICY_NAME,)):
        thing, files, _ = self.fleet.device("q", policies=policies)
        return thing, files

    def qualification(self, cases: list, device_run, *, settings: dict | None = None, tag: str = "tls"
                      ) -> Qualification:
        entries = [c if isinstance(c, dict) else {"id": c} for c in cases]
        suite = parse_suite({"name": "test", "settings": {**FAST, **(settings or {})}, "cases": entries},
                            source="test-suite", base_dir=self.tmp)
        view = AuthView(self.fleet.registry.snapshot(certificate_pem=False))
        device = device_run if hasattr(device_run, "per_case") else CoroutineDevice(device_run)
        return Qualification(suite, device, profiles=self.profiles,
                             contexts=ContextFactory(self.tmp / tag, view.ca_pems),
                             policies=PolicySource(view), ca_file=self.fleet.store.paths.root_cert)

    def run(self, cases: list, device_run, *, settings: dict | None = None, loop: str = "asyncio") -> RunResult:
        qualification = self.qualification(cases, device_run, settings=settings)
        if loop == "uvloop":
            import uvloop
            return uvloop.run(qualification.run())
        return asyncio.run(qualification.run())

    def run_concurrently(self, runs: list[tuple[list, object]]) -> list[RunResult]:
        """Several qualifications at once, each with its own listener and device (one event loop)."""
        qualifications = [self.qualification(cases, device, tag=f"tls-{i}") for i, (cases, device) in enumerate(runs)]

        async def main() -> list[RunResult]:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(q.run()) for q in qualifications]
            return [t.result() for t in tasks]

        return asyncio.run(main())


@pytest.fixture(scope="session")
def qualify_profiles(fleet):
    fleet.registry.create_policy("qualify-sensor", SENSOR_POLICY)
    return ServerProfiles(fleet.store.load_issuer(), ["localhost", "127.0.0.1", "::1"], now=fleet.now)


@pytest.fixture
def env(fleet, qualify_profiles, tmp_path) -> Env:
    return Env(fleet, qualify_profiles, tmp_path)


def verdicts(result: RunResult) -> dict[str, Verdict]:
    return {r.case_id: r.verdict for r in result.results}


def case(result: RunResult, case_id: str):
    return next(r for r in result.results if r.case_id == case_id)


def explain(result: RunResult) -> str:
    lines = []
    for r in result.results:
        lines.append(f"{r.case_id}: {r.verdict}: {r.summary} {list(r.warnings)}")
        if not r.verdict.passed:
            lines += [f"    {e['t']}s {e['source']}: {e['text']}" for e in r.evidence]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- four real clients

def _client(name: str, files, thing: str):
    sub, pub = f"cmd/{thing}/#", f"dt/{thing}/t"
    if name == "native":
        return native_device(files, subscribe=sub, publish=pub)
    if name == "paho":
        return paho_device(files, thing, subscribe=sub, publish=pub)
    if name == "aiomqtt":
        return aiomqtt_device(files, thing, subscribe=sub, publish=pub)
    return awsiotsdk_device(files, thing, subscribe=sub, publish=pub)


CLIENTS = ("native", "paho", "aiomqtt", "awsiotsdk")


def test_four_real_clients_with_verification_pass_the_tls_cases(env):
    """Every TLS case for every client, each case in its own run, all at once: aws-crt (s2n) answers a bad server
    certificate only after its 10-30 s blinding delay, and the runs overlap those waits."""
    plan = []
    for client in CLIENTS:
        thing, files = env.device()
        plan += [(client, case_id, _client(client, files, thing)) for case_id in TLS_ONLY]
    thing, files = env.device()
    plan.append(("awsiotsdk-tls12", "TLS_Refuse_Legacy_Versions", awsiotsdk_device(files, thing, min_tls12=True)))
    results = env.run_concurrently([([case_id], device) for _, case_id, device in plan])
    table = {(client, case_id): result.results[0] for (client, case_id, _), result in zip(plan, results)}
    shown = "\n".join(f"{c:16} {k:40} {r.verdict}: {r.summary}" for (c, k), r in table.items())
    for (client, case_id), result in table.items():
        if (client, case_id) == ("awsiotsdk", "TLS_Refuse_Legacy_Versions"):
            # aws-crt's default TLS policy (s2n "default") still negotiates TLS 1.1: the builder cannot raise it
            assert result.verdict is Verdict.FAIL and "completed a TLSv1.1 handshake" in result.summary, shown
            continue
        assert result.verdict.passed, shown
    for client in CLIENTS:
        for refusal in ("TLS_Incorrect_Subject_Name_Server_Cert", "TLS_Unsecure_Server_Cert",
                        "TLS_Expired_Server_Cert"):
            assert "refused" in table[client, refusal].summary or "closed" in table[client, refusal].summary, shown


def test_the_device_engine_passes_the_mqtt_cases_on_uvloop(env):
    thing, files = env.device()
    cases = ["MQTT_Connect", {"id": "MQTT_Subscribe", "topic": "cmd/{thing}/#", "qos": 1},
             {"id": "MQTT_Publish", "topic": "dt/{thing}/t", "qos": 0}, "MQTT_Client_Puback_Qos1",
             "TLS_Receive_Maximum_Size_Fragments", "MQTT_Client_Id_No_Secrets",
             {"id": "Permissions_Least_Privilege", "observe": 0.5}]
    result = env.run(cases, native_device(files, subscribe=f"cmd/{thing}/#", publish=f"dt/{thing}/t"),
                     loop="uvloop")
    assert result.verdict.passed, explain(result)
    assert "16384 bytes of plaintext" in case(result, "TLS_Receive_Maximum_Size_Fragments").summary
    assert case(result, "MQTT_Subscribe").summary == f"SUBSCRIBE 'cmd/{thing}/#' QoS 1"


# --------------------------------------------------------------------------------------------- broken TLS devices

def test_paho_without_host_name_check_fails_incorrect_subject_name(env):
    thing, files = env.device()
    result = env.run(["TLS_Incorrect_Subject_Name_Server_Cert", "TLS_Unsecure_Server_Cert", "TLS_Expired_Server_Cert"],
                     paho_device(files, thing, check_hostname=False))
    got = verdicts(result)
    assert got["TLS_Incorrect_Subject_Name_Server_Cert"] is Verdict.FAIL, explain(result)
    summary = case(result, "TLS_Incorrect_Subject_Name_Server_Cert").summary
    assert "accepted a server certificate issued for wrong-host.invalid" in summary
    assert f"then sent CONNECT as {thing!r}" in summary
    # it still checks the chain and the validity: only the host name check is missing
    assert got["TLS_Unsecure_Server_Cert"] is Verdict.PASS and got["TLS_Expired_Server_Cert"] is Verdict.PASS
    assert result.verdict is Verdict.FAIL


def test_paho_trusting_any_certificate_fails_unsecure_and_expired(env):
    thing, files = env.device()
    result = env.run(["TLS_Unsecure_Server_Cert", "TLS_Expired_Server_Cert", "TLS_Incorrect_Subject_Name_Server_Cert"],
                     paho_device(files, thing, verify=False))
    got = verdicts(result)
    assert got == {"TLS_Unsecure_Server_Cert": Verdict.FAIL, "TLS_Expired_Server_Cert": Verdict.FAIL,
                   "TLS_Incorrect_Subject_Name_Server_Cert": Verdict.FAIL}, explain(result)
    assert "from a CA it was never given" in case(result, "TLS_Unsecure_Server_Cert").summary
    assert "expired" in case(result, "TLS_Expired_Server_Cert").summary


def test_a_device_trusting_another_ca_fails_tls_connect(env, foreign_ca, tmp_path):
    thing, files = env.device()
    other = tmp_path / "other-ca.pem"
    other.write_bytes(foreign_ca.pem_with_chain(foreign_ca.certificate))
    result = env.run(["TLS_Connect"], paho_device(files, thing, ca_file=other))
    assert verdicts(result) == {"TLS_Connect": Verdict.FAIL}, explain(result)
    assert "unknown_ca" in case(result, "TLS_Connect").summary


def test_a_device_with_a_small_tls_buffer_fails_large_certificate_and_maximum_fragments(env):
    thing, files = env.device()
    device = RawDevice(files, thing, record_limit=4096, after_connack=(subscribe_packet(f"cmd/{thing}/qualify"),))
    result = env.run(["TLS_Connect", "TLS_Large_Size_Server_Cert", "TLS_Receive_Maximum_Size_Fragments"], device)
    got = verdicts(result)
    assert got["TLS_Connect"] is Verdict.PASS, explain(result)
    assert got["TLS_Large_Size_Server_Cert"] is Verdict.FAIL, explain(result)
    assert got["TLS_Receive_Maximum_Size_Fragments"] is Verdict.FAIL, explain(result)


def test_a_device_offering_only_unsupported_cipher_suites_fails(env):
    thing, files = env.device()
    device = RawDevice(files, thing, context_args={"maximum": ssl.TLSVersion.TLSv1_2,
                                                   "ciphers": "DHE-RSA-AES128-GCM-SHA256"})
    result = env.run(["TLS_Support_AWS_IoT_Cipher_Suites"], device)
    assert verdicts(result) == {"TLS_Support_AWS_IoT_Cipher_Suites": Verdict.FAIL}, explain(result)
    assert "DHE-RSA-AES128-GCM-SHA256" in case(result, "TLS_Support_AWS_IoT_Cipher_Suites").summary


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["offers-1.0-to-1.3", "tls-1.2-client"])
def test_a_device_accepting_tls_1_1_fails_the_legacy_version_case(env, maximum):
    thing, files = env.device()
    device = RawDevice(files, thing, context_args={"minimum": ssl.TLSVersion.TLSv1, "maximum": maximum,
                                                   "ciphers": "DEFAULT:@SECLEVEL=0"})
    result = env.run(["TLS_Refuse_Legacy_Versions"], device)
    assert verdicts(result) == {"TLS_Refuse_Legacy_Versions": Verdict.FAIL}, explain(result)
    summary = case(result, "TLS_Refuse_Legacy_Versions").summary
    assert "completed a TLSv1.1 handshake" in summary


def test_a_refusal_the_endpoint_caused_is_an_error_never_a_pass(env):
    """A device that trusts anything but presents no client certificate: the endpoint refuses it before it shows
    whether it checks the server, so the refusal cases cannot pass."""
    result = env.run(["TLS_Unsecure_Server_Cert", "TLS_Incorrect_Subject_Name_Server_Cert"],
                     RawDevice(None, context_args={"verify": False}))
    assert set(verdicts(result).values()) == {Verdict.ERROR}, explain(result)
    assert "inconclusive" in case(result, "TLS_Unsecure_Server_Cert").summary


# --------------------------------------------------------------------------------------------- broken MQTT devices

def test_a_device_that_never_sends_connect_fails_mqtt_connect(env):
    thing, files = env.device()
    result = env.run(["MQTT_Connect"], RawDevice(files, thing, send_connect=False), settings={"packet_timeout": 0.5})
    assert verdicts(result) == {"MQTT_Connect": Verdict.FAIL}, explain(result)
    assert "no CONNECT within 0.5 s" in case(result, "MQTT_Connect").summary


def test_subscribe_and_publish_elsewhere_fail(env):
    thing, files = env.device()
    device = RawDevice(files, thing, after_connack=(subscribe_packet(f"cmd/{thing}/other"),
                                                    publish_packet(f"dt/{thing}/other")))
    cases = [{"id": "MQTT_Subscribe", "topic": "cmd/{thing}/#"}, {"id": "MQTT_Publish", "topic": "dt/{thing}/t"},
             "MQTT_Client_Puback_Qos1"]
    result = env.run(cases, device, settings={"packet_timeout": 0.5})
    assert verdicts(result) == {"MQTT_Subscribe": Verdict.FAIL, "MQTT_Publish": Verdict.FAIL,
                                "MQTT_Client_Puback_Qos1": Verdict.ERROR}, explain(result)
    assert f"it sent SUBSCRIBE 'cmd/{thing}/other' QoS 1" in case(result, "MQTT_Subscribe").summary
    assert f"it sent PUBLISH 'dt/{thing}/other' QoS 0" in case(result, "MQTT_Publish").summary


def test_a_device_that_never_acknowledges_qos1_fails_puback(env):
    thing, files = env.device()
    device = RawDevice(files, thing, ack_qos1=False, after_connack=(subscribe_packet(f"cmd/{thing}/qualify"),))
    result = env.run(["MQTT_Client_Puback_Qos1"], device, settings={"packet_timeout": 0.5})
    assert verdicts(result) == {"MQTT_Client_Puback_Qos1": Verdict.FAIL}, explain(result)


def test_keep_alive_honoured_or_not(env):
    thing, files = env.device()
    good, silent, long = (r.results[0] for r in env.run_concurrently([
        ([{"id": "MQTT_Keep_Alive", "periods": 1}], native_device(files, keep_alive=1)),
        ([{"id": "MQTT_Keep_Alive", "periods": 1}], RawDevice(files, thing, keep_alive=1, ping=False)),
        ([{"id": "MQTT_Keep_Alive", "max_wait": 1.0}], RawDevice(files, thing, keep_alive=60))]))
    assert good.verdict is Verdict.PASS, good
    assert silent.verdict is Verdict.FAIL and "silent for" in silent.summary, silent
    assert long.verdict is Verdict.SKIPPED and "needs 90 s of observation" in long.summary, long


def test_a_client_id_carrying_a_password_fails(env):
    thing, files = env.device()
    result = env.run(["MQTT_Client_Id_No_Secrets"], RawDevice(files, f"{thing}?password=hunter2"))
    assert verdicts(result) == {"MQTT_Client_Id_No_Secrets": Verdict.FAIL}, explain(result)
    assert "a secret as key=value" in case(result, "MQTT_Client_Id_No_Secrets").summary


# --------------------------------------------------------------------------------------------- backoff

BACKOFF = {"connect_timeout": 5.0, "retry_timeout": 4.0}
NATIVE_BACKOFF = dict(base=0.2, cap=4.0)  # seeded full jitter (seed 1): 0.03, 0.34, 0.61, 0.41, 1.59 s ...


def _native(files, **kw):
    return native_device(files, backoff=Backoff(**NATIVE_BACKOFF, random=random.Random(1).random), **kw)


def test_jitter_backoff_native_passes_paho_warns_fixed_interval_fails(env):
    thing, files = env.device()
    jitter = [{"id": "MQTT_Connect_Jitter_Backoff_Retries", "attempts": 4, "rounds": 1, "withhold": 0.25,
               **BACKOFF}]
    native, paho, fixed = (r.results[0] for r in env.run_concurrently([
        (jitter, _native(files, connect_timeout=0.15)),
        (jitter, paho_device(files, thing, min_delay=0.1, max_delay=2.0)),
        (jitter, fixed_interval_device(files, 0.3, connect_timeout=0.15))]))
    assert native.verdict is Verdict.PASS, native
    assert paho.verdict is Verdict.PASS_WITH_WARNINGS and "no jitter" in paho.warnings[0], paho
    assert fixed.verdict is Verdict.FAIL, fixed
    assert re.search(r"fixed interval of about 0\.3\d* s", fixed.summary), fixed.summary


def test_two_rounds_of_withheld_connacks(env):
    thing, files = env.device()
    jitter = [{"id": "MQTT_Connect_Jitter_Backoff_Retries", "attempts": 4, "rounds": 2, "withhold": 0.2}]
    native = env.run(jitter, native_device(files, connect_timeout=0.1,
                                           backoff=Backoff(base=0.15, cap=0.6, random=random.Random(1).random)),
                     settings=BACKOFF)
    result = case(native, "MQTT_Connect_Jitter_Backoff_Retries")
    assert result.verdict is Verdict.PASS, explain(native)
    assert [len(r) for r in result.details["delays_s"]] == [4, 4]


@pytest.mark.parametrize("case_id, setting", [("MQTT_Connect_Exponential_Backoff_Retries", "attempts"),
                                              ("MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect", "reconnections")])
def test_backoff_after_refused_connack_and_after_server_disconnect(env, case_id, setting):
    thing, files = env.device()
    cases = [{"id": case_id, setting: 4, **BACKOFF}]
    native, fixed = (r.results[0] for r in env.run_concurrently([(cases, _native(files)),
                                                                  (cases, fixed_interval_device(files, 0.3))]))
    assert native.verdict is Verdict.PASS, native
    assert fixed.verdict is Verdict.FAIL and "fixed interval" in fixed.summary, fixed


def test_a_device_that_stops_retrying_fails(env):
    thing, files = env.device()
    result = env.run([{"id": "MQTT_Connect_Exponential_Backoff_Retries", "attempts": 4, "retry_timeout": 0.5}],
                     RawDevice(files, thing, retry=5.0), settings=BACKOFF)
    assert verdicts(result) == {"MQTT_Connect_Exponential_Backoff_Retries": Verdict.FAIL}, explain(result)
    assert "did not try again within 0.5 s" in case(result, "MQTT_Connect_Exponential_Backoff_Retries").summary


# --------------------------------------------------------------------------------------------- permissions

def test_publishing_outside_the_policy_fails_naming_the_statement(env):
    thing, files = env.device(policies=("qualify-sensor",))
    perms = [{"id": "Permissions_Least_Privilege", "observe": 0.6}]
    bad = env.run(perms, native_device(files, subscribe=f"cmd/{thing}/#", publish=f"dt/{thing}/secret"))
    assert verdicts(bad) == {"Permissions_Least_Privilege": Verdict.FAIL}, explain(bad)
    summary = case(bad, "Permissions_Least_Privilege").summary
    assert summary == (f"iot:Publish on topic/dt/{thing}/secret denied by policy 'qualify-sensor' version 1 "
                       "Statement[2] (Deny)")
    implicit = env.run(perms, native_device(files, publish="elsewhere/t"))
    assert "no statement allows it (implicit deny)" in case(implicit, "Permissions_Least_Privilege").summary
    good = env.run(perms, native_device(files, subscribe=f"cmd/{thing}/#", publish=f"dt/{thing}/t"))
    assert verdicts(good) == {"Permissions_Least_Privilege": Verdict.PASS}, explain(good)


def test_a_policy_file_from_the_suite(env, tmp_path):
    thing, files = env.device()
    (tmp_path / "strict.json").write_text(SENSOR_POLICY.replace("/secret", "/t"))
    result = env.run([{"id": "Permissions_Least_Privilege", "observe": 0.6, "policy": "strict.json"}],
                     native_device(files, publish=f"dt/{thing}/t"))
    assert verdicts(result) == {"Permissions_Least_Privilege": Verdict.FAIL}, explain(result)
    assert "policy 'strict' version file Statement[2] (Deny)" in case(result, "Permissions_Least_Privilege").summary


# --------------------------------------------------------------------------------------------- preconditions

def test_a_device_that_never_connects_is_an_error(env):
    async def idle(ep, stop):
        await stop.wait()

    result = env.run(["TLS_Connect", "MQTT_Connect"], idle, settings={"connect_timeout": 0.2})
    assert set(verdicts(result).values()) == {Verdict.ERROR}
    assert case(result, "TLS_Connect").summary == "the device did not connect within 0.2 s"
    assert result.verdict is Verdict.ERROR


def test_a_crashing_device_is_an_error_with_its_reason(env):
    async def crash(ep, stop):
        raise RuntimeError("firmware assertion failed")

    result = env.run(["TLS_Unsecure_Server_Cert"], crash)
    assert verdicts(result) == {"TLS_Unsecure_Server_Cert": Verdict.ERROR}
    assert "RuntimeError: firmware assertion failed" in case(result, "TLS_Unsecure_Server_Cert").summary


def test_a_device_command_that_exits_is_an_error(env, tmp_path):
    device = CommandDevice("sh -c 'echo cannot open {ca} >&2; exit 3'", tmp_path / "logs")
    result = env.run(["TLS_Expired_Server_Cert"], device)
    assert verdicts(result) == {"TLS_Expired_Server_Cert": Verdict.ERROR}, explain(result)
    summary = case(result, "TLS_Expired_Server_Cert").summary
    assert "exited with code 3" in summary and "cannot open" in summary and "root-ca.pem" in summary


def test_an_external_device_that_reconnects_by_itself(env):
    """No --device-cmd: the endpoint waits; the device keeps reconnecting between cases on its own."""
    thing, files = env.device()
    ready = asyncio.Event()
    endpoint = {}

    def on_ready(ep) -> None:
        endpoint["ep"] = ep
        ready.set()

    qualification = env.qualification(["TLS_Connect", "TLS_Unsecure_Server_Cert", "MQTT_Connect",
                                       {"id": "MQTT_Subscribe", "topic": "cmd/{thing}/#"}], ExternalDevice())
    qualification.on_ready = on_ready
    run_device = native_device(files, subscribe=f"cmd/{thing}/#")

    async def main() -> RunResult:
        stop = asyncio.Event()

        async def device() -> None:
            await ready.wait()
            await run_device(endpoint["ep"], stop)

        async with asyncio.TaskGroup() as group:
            group.create_task(device())
            try:
                return await qualification.run()
            finally:
                stop.set()

    result = asyncio.run(main())
    assert result.verdict.passed, explain(result)
    assert result.device == "an external device"


def test_a_connection_without_a_client_hello_is_not_the_evidence(env):
    """A device whose first TCP connection closes before any ClientHello (it gave up, a port probe): the case takes
    its next attempt instead of judging on nothing."""
    thing, files = env.device()
    then = paho_device(files, thing, check_hostname=False)

    async def probe_first(ep, stop):
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        writer.close()
        await writer.wait_closed()
        await then(ep, stop)

    result = env.run(["TLS_Incorrect_Subject_Name_Server_Cert"], probe_first)
    assert verdicts(result) == {"TLS_Incorrect_Subject_Name_Server_Cert": Verdict.FAIL}, explain(result)
    assert any("waiting for the device's next attempt" in e["text"] for e in result.results[0].evidence)


def test_an_mqtt5_device_with_a_small_maximum_packet_size_is_not_sent_more(env):
    thing, files = env.device()
    device = native_device(files, subscribe=f"cmd/{thing}/#", protocol_level=5, max_packet_size=4096)
    result = env.run(["TLS_Receive_Maximum_Size_Fragments", "MQTT_Client_Puback_Qos1"], device)
    got = verdicts(result)
    assert got == {"TLS_Receive_Maximum_Size_Fragments": Verdict.SKIPPED, "MQTT_Client_Puback_Qos1": Verdict.PASS}, \
        explain(result)
    assert "at most 4096 bytes" in case(result, "TLS_Receive_Maximum_Size_Fragments").summary


def test_a_device_that_refuses_every_certificate_proves_nothing(env, foreign_ca, tmp_path):
    """It trusts another CA, so it refuses the bad certificates too: without a handshake it completes with the
    valid certificate, its refusals are errors, never passes."""
    thing, files = env.device()
    other = tmp_path / "other-ca.pem"
    other.write_bytes(foreign_ca.pem_with_chain(foreign_ca.certificate))
    alone = env.run(["TLS_Unsecure_Server_Cert", "TLS_Expired_Server_Cert"], paho_device(files, thing, ca_file=other))
    assert set(verdicts(alone).values()) == {Verdict.ERROR}, explain(alone)
    assert "also refused the valid certificate" in case(alone, "TLS_Unsecure_Server_Cert").summary
    good = env.run(["TLS_Unsecure_Server_Cert"], paho_device(files, thing))  # the control passes for a good one
    assert verdicts(good) == {"TLS_Unsecure_Server_Cert": Verdict.PASS}, explain(good)
    assert any("control: the device completed a handshake" in e["text"] for e in good.results[0].evidence)
