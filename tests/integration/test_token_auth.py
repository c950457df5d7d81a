"""Devices without certificates, end to end: the AWS IoT Device SDK's own builders (custom authorizer with a JWT,
SigV4 over WebSocket) against the gateway's token listener, a real Mosquitto behind it; then every refused token
and signature, each with its answer and its one access-log line naming the authorizer or key and the reason."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from awscrt import auth as crt_auth
from awscrt import mqtt as crt_mqtt
from awscrt import mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devices.tokens import custom_auth_username, sign_token, sigv4_target, try_connect
from gateway.auth.secrets import SecretBox, token_digest
from iotgate.commands.identity import new_access_key_id, new_secret

from .conftest import WAIT, start_gateway

ISSUER = "https://idp.iotgate.test"
TOKEN_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${jwt:sub}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/tok/${jwt:sub}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/tok/${jwt:sub}/*"}]})
KEY_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/app-*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/apps/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/apps/*"}]})
LAMBDA = """import json, sys
event = json.load(sys.stdin)
ok = event.get("token") == "let-me-in"
doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
       {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/lam/*"},
       {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/lam/*"}]}
print(json.dumps({"isAuthenticated": ok, "principalId": "lambda1", "policyDocuments": [doc],
                  "disconnectAfterInSeconds": 3600, "refreshAfterInSeconds": 300}))
"""


class Tokens:
    """The fleet's token world: an IdP key and JWKS, the authorizers' signing key, issued access keys."""

    def __init__(self, fleet, tmp) -> None:
        self.fleet = fleet
        self.idp = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.idp.public_key()))
        jwk["kid"] = "idp-1"
        (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        public = self.signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        reg = fleet.registry
        reg.create_policy("token-devices", TOKEN_POLICY)
        reg.create_policy("apps", KEY_POLICY)
        jwks = {"jwks_file": str(tmp / "jwks.json"), "issuer": ISSUER, "audience": "iotgate"}
        reg.create_authorizer("fleet-jwt", "jwt", config=jwks, token_key_name="token", signing_keys={"k1": public},
                              policies=["token-devices"])
        reg.create_authorizer("open-jwt", "jwt", config=jwks, signing_disabled=True, policies=["token-devices"])
        reg.create_authorizer("off-jwt", "jwt", config=jwks, signing_disabled=True, status="INACTIVE",
                              policies=["token-devices"])
        (tmp / "lambda.py").write_text(LAMBDA)
        reg.create_authorizer("lambda", "command", config={"command": [sys.executable, str(tmp / "lambda.py")]},
                              token_key_name="token", signing_disabled=True)
        self.box = SecretBox.load(fleet.home, create=True)

    def jwt(self, sub: str, *, aud: str = "iotgate", exp: int = 600, key=None) -> str:
        now = int(time.time())
        return jwt.encode({"sub": sub, "iss": ISSUER, "aud": aud, "iat": now, "exp": now + exp}, key or self.idp,
                          algorithm="RS256", headers={"kid": "idp-1"})

    def signature(self, token: str) -> str:
        return sign_token(self.signer, token)

    def key(self, identity: str, *, temporary: bool = False, status: str = "ACTIVE"):
        akid, secret = new_access_key_id(temporary), new_secret()
        token = f"session-{akid}" if temporary else None
        self.fleet.registry.create_access_key(
            akid, identity, self.box.seal(akid, secret), policies=["apps"],
            session_token_sha256=token_digest(token) if token else None,
            expires_at=datetime.now(timezone.utc) + timedelta(hours=1) if temporary else None)
        if status != "ACTIVE":
            self.fleet.registry.set_access_key_status(akid, status)
        return akid, secret, token


@pytest.fixture(scope="module")
def tokens(fleet, tmp_path_factory):
    return Tokens(fleet, tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def tgw(fleet, broker, tokens):
    running = start_gateway(fleet, broker.config.url, token_port=0)
    yield running
    running.thread.stop()


class SdkClient:
    """An awsiot MQTT 5 client built by one of the SDK's builders, with events to wait on."""

    def __init__(self, build, **kwargs) -> None:
        self.connected = threading.Event()
        self.failure: list = []
        self.messages: list = []
        self.got = threading.Event()
        self.stopped = threading.Event()
        self.client = build(on_publish_received=self._message,
                            on_lifecycle_connection_success=lambda d: self.connected.set(),
                            on_lifecycle_connection_failure=self._failed,
                            on_lifecycle_stopped=lambda d: self.stopped.set(), **kwargs)

    def _failed(self, data) -> None:
        self.failure.append(data)
        self.connected.set()

    def _message(self, data) -> None:
        self.messages.append(data.publish_packet)
        self.got.set()

    def start(self) -> bool:
        self.client.start()
        assert self.connected.wait(WAIT), "the SDK reported neither success nor failure"
        return not self.failure

    def exchange(self, topic: str, payload: bytes) -> mqtt5.PublishPacket:
        sub = self.client.subscribe(mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic, mqtt5.QoS.AT_LEAST_ONCE)])).result(WAIT)
        assert sub.reason_codes == [mqtt5.SubackReasonCode.GRANTED_QOS_1]
        ack = self.client.publish(mqtt5.PublishPacket(topic=topic, payload=payload,
                                                      qos=mqtt5.QoS.AT_LEAST_ONCE)).result(WAIT)
        assert ack.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS
        assert self.got.wait(WAIT)
        return self.messages[0]

    def publish_code(self, topic: str):
        return self.client.publish(mqtt5.PublishPacket(topic=topic, payload=b"x", qos=mqtt5.QoS.AT_LEAST_ONCE)
                                   ).result(WAIT).puback.reason_code

    def stop(self) -> None:
        self.client.stop()
        self.stopped.wait(WAIT)


@pytest.fixture
def sdk(fleet, tgw):
    made: list[SdkClient] = []

    def make(build, **kwargs) -> SdkClient:
        tgw.sync(fleet.registry)
        client = SdkClient(build, endpoint="localhost", port=tgw.gateway.token_port,
                           ca_filepath=str(fleet.store.paths.root_cert), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()


# --------------------------------------------------------------------------------------------- the SDK, unchanged

def test_sdk_custom_authorizer_with_a_signed_jwt_publishes_and_receives(tgw, sdk, tokens):
    tok = tokens.jwt("sensor-1")
    client = sdk(mqtt5_client_builder.direct_with_custom_authorizer, client_id="sensor-1",
                 auth_authorizer_name="fleet-jwt", auth_authorizer_signature=tokens.signature(tok),
                 auth_token_key_name="token", auth_token_value=tok)
    assert client.start()
    message = client.exchange("tok/sensor-1/temp", b"21.5")
    assert (message.topic, message.payload) == ("tok/sensor-1/temp", b"21.5")
    # the claim-scoped policy holds per packet: another device's topic is refused with AWS's 0x87
    assert client.publish_code("tok/sensor-2/temp") == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    record = tgw.events.wait_for(event="connect", client_id="sensor-1", decision="allowed")
    assert record["authorizer"] == "fleet-jwt" and record["principal"] == "sensor-1"
    assert record["certificate_id"] is None and record["statement"] == "token-devices/v1/Statement[0]/Allow"
    denied = tgw.events.wait_for(event="publish", client_id="sensor-1", decision="denied")
    assert denied["resource"] == "topic/tok/sensor-2/temp" and denied["authorizer"] == "fleet-jwt"


def test_sdk_websocket_with_sigv4_static_credentials_publishes_and_receives(tgw, sdk, tokens):
    akid, secret, _ = tokens.key("app-fleet")
    credentials = crt_auth.AwsCredentialsProvider.new_static(akid, secret)
    client = sdk(mqtt5_client_builder.websockets_with_default_aws_signing, region="us-east-1",
                 credentials_provider=credentials, client_id="app-1")
    assert client.start()
    message = client.exchange("apps/status", b"up")
    assert message.payload == b"up"
    record = tgw.events.wait_for(event="connect", client_id="app-1", decision="allowed")
    assert record["access_key"] == akid and record["principal"] == "app-fleet"


def test_sdk_websocket_with_temporary_credentials_and_session_token(tgw, sdk, tokens):
    akid, secret, token = tokens.key("app-temp", temporary=True)
    credentials = crt_auth.AwsCredentialsProvider.new_static(akid, secret, token)
    client = sdk(mqtt5_client_builder.websockets_with_default_aws_signing, region="us-east-1",
                 credentials_provider=credentials, client_id="app-2")
    assert client.start()
    assert client.exchange("apps/temp", b"t").payload == b"t"


def test_sdk_websocket_with_a_custom_authorizer_in_the_connect(tgw, sdk, tokens):
    tok = tokens.jwt("sensor-ws")
    client = sdk(mqtt5_client_builder.websockets_with_custom_authorizer, client_id="sensor-ws",
                 auth_authorizer_name="fleet-jwt", auth_authorizer_signature=tokens.signature(tok),
                 auth_token_key_name="token", auth_token_value=tok)
    assert client.start()
    assert client.exchange("tok/sensor-ws/a", b"w").payload == b"w"


def test_sdk_custom_authorizer_backed_by_a_command(tgw, sdk):
    client = sdk(mqtt5_client_builder.direct_with_custom_authorizer, client_id="lam-1",
                 auth_authorizer_name="lambda", auth_token_key_name="token", auth_token_value="let-me-in",
                 auth_password=b"pw")
    assert client.start()
    assert client.exchange("lam/x", b"hi").payload == b"hi"
    record = tgw.events.wait_for(event="connect", client_id="lam-1", decision="allowed")
    assert record["authorizer"] == "lambda" and record["principal"] == "lambda1"
    assert record["statement"] == "lambda.policyDocuments[0]/v1/Statement[0]/Allow"


def test_sdk_mqtt311_websocket_with_sigv4(tgw, fleet, tokens):
    # (mqtt_connection_builder.direct_with_custom_authorizer always dials port 443: it runs against --token-port 443)
    akid, secret, _ = tokens.key("app-v311")
    tgw.sync(fleet.registry)
    connection = mqtt_connection_builder.websockets_with_default_aws_signing(
        region="us-east-1", credentials_provider=crt_auth.AwsCredentialsProvider.new_static(akid, secret),
        endpoint="localhost", port=tgw.gateway.token_port, ca_filepath=str(fleet.store.paths.root_cert),
        client_id="app-v311")
    connection.connect().result(WAIT)
    try:
        received = threading.Event()
        subscribed, _ = connection.subscribe("apps/v311", crt_mqtt.QoS.AT_LEAST_ONCE,
                                             callback=lambda **kw: received.set())
        subscribed.result(WAIT)
        connection.publish("apps/v311", b"hi", crt_mqtt.QoS.AT_LEAST_ONCE)[0].result(WAIT)
        assert received.wait(WAIT)
    finally:
        connection.disconnect().result(WAIT)
    assert tgw.events.wait_for(event="connect", client_id="app-v311", decision="allowed")["access_key"] == akid


# --------------------------------------------------------------------------------------------- refusals

def run(coro):
    return asyncio.run(coro)


def attempt(tgw, fleet, client_id: str, **kwargs):
    tgw.sync(fleet.registry)
    return run(try_connect("127.0.0.1", tgw.gateway.token_port, fleet.store.paths.root_cert, client_id=client_id,
                           **kwargs))


def username(tokens, tok, *, authorizer="fleet-jwt", signature=None):
    return custom_auth_username(authorizer, "token", tok, tokens.signature(tok) if signature is None else signature)


@pytest.mark.parametrize("case, key", [
    ("expired", "token_expired"),
    ("audience", "token_audience"),
    ("foreign-idp", "token_signature"),
    ("bad-signature", "token_signature_invalid"),
    ("no-signature", "token_signature_missing"),
    ("unknown-authorizer", "authorizer_unknown"),
    ("inactive-authorizer", "authorizer_inactive"),
    ("lambda-says-no", "token_rejected"),
    ("no-authorizer", "authorizer_missing"),
])
def test_refused_tokens_get_connack_not_authorized_and_one_log_line(tgw, fleet, tokens, case, key):
    client_id = f"refused-{case}"
    tok = tokens.jwt(client_id)
    names = {"unknown-authorizer": "nobody", "inactive-authorizer": "off-jwt", "lambda-says-no": "lambda"}
    authorizer = names.get(case, "fleet-jwt")
    if case == "expired":
        tok = tokens.jwt(client_id, exp=-120)  # beyond the 60 s leeway
    elif case == "audience":
        tok = tokens.jwt(client_id, aud="another-app")
    elif case == "foreign-idp":
        tok = tokens.jwt(client_id, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if case == "bad-signature":
        user = username(tokens, tok, signature=tokens.signature(tok + "x"))
    elif case == "no-signature":
        user = custom_auth_username("fleet-jwt", "token", tok)
    elif case == "no-authorizer":
        user = f"?token={tok}"
    else:
        user = username(tokens, tok, authorizer=authorizer)
    result = attempt(tgw, fleet, client_id, username=user)
    assert (result.stage, result.code) == ("mqtt", 0x87), result
    record = tgw.events.wait_for(event="connect", client_id=client_id, decision="refused")
    assert record["kind"] == key, record
    if case != "no-authorizer":
        assert record["authorizer"] == authorizer
    assert len(tgw.events.find(event="connect", client_id=client_id)) == 1


def test_mqtt311_refusal_is_connack_5(tgw, fleet, tokens):
    tok = tokens.jwt("old-device", exp=-300)
    result = attempt(tgw, fleet, "old-device", username=username(tokens, tok), protocol_level=4)
    assert (result.stage, result.code) == ("mqtt", 5)


def test_jwt_in_the_password_with_signing_disabled(tgw, fleet, tokens):
    tok = tokens.jwt("pw-device")
    ok = attempt(tgw, fleet, "pw-device", username=custom_auth_username("open-jwt"), password=tok.encode())
    assert ok.accepted
    spoof = attempt(tgw, fleet, "pw-device-2", username=custom_auth_username("open-jwt"), password=tok.encode())
    assert spoof.code == 0x87  # the token's sub is pw-device: connecting as another client id is denied
    assert tgw.events.wait_for(event="connect", client_id="pw-device-2")["kind"] == "connect_denied"


def ws_attempt(tgw, fleet, target: str, client_id: str = "app-x"):
    return attempt(tgw, fleet, client_id, websocket_target=target)


def signed(tokens, akid, secret, *, now=None, token=None, region="us-east-1"):
    return sigv4_target("localhost", akid, secret, region, now or datetime.now(timezone.utc), session_token=token)


@pytest.mark.parametrize("case, key", [
    ("wrong-secret", "signature_mismatch"),
    ("stale", "signature_expired"),
    ("future", "signature_not_yet_valid"),
    ("unknown-key", "access_key_unknown"),
    ("inactive-key", "access_key_inactive"),
    ("region", "signature_scope"),
    ("token-for-long-term-key", "session_token_invalid"),
    ("temporary-without-token", "session_token_missing"),
    ("temporary-wrong-token", "session_token_invalid"),
])
def test_refused_signatures_get_403_and_one_log_line(tgw, fleet, tokens, case, key):
    temporary = case.startswith("temporary")
    akid, secret, token = tokens.key(f"app-{case}", temporary=temporary,
                                     status="INACTIVE" if case == "inactive-key" else "ACTIVE")
    now = datetime.now(timezone.utc)
    target = {
        "wrong-secret": lambda: signed(tokens, akid, secret[:-2] + "xx"),
        "stale": lambda: signed(tokens, akid, secret, now=now - timedelta(minutes=6)),
        "future": lambda: signed(tokens, akid, secret, now=now + timedelta(minutes=6)),
        "unknown-key": lambda: signed(tokens, new_access_key_id(False), secret),
        "inactive-key": lambda: signed(tokens, akid, secret),
        "region": lambda: signed(tokens, akid, secret, region="eu-west-1"),
        "token-for-long-term-key": lambda: signed(tokens, akid, secret, token="made-up"),
        "temporary-without-token": lambda: signed(tokens, akid, secret),
        "temporary-wrong-token": lambda: signed(tokens, akid, secret, token="not-" + (token or "")),
    }[case]()
    result = ws_attempt(tgw, fleet, target)
    assert (result.stage, result.code) == ("http", 403), result
    assert json.loads(result.detail)["message"]
    tgw.events.wait_for(event="connect", transport="websocket", kind=key)  # the line may follow the answer
    records = [r for r in tgw.events.find(event="connect", transport="websocket") if r["kind"] == key]
    if case != "unknown-key":
        assert any(r.get("access_key") == akid for r in records)


def test_replayed_signature_is_refused(tgw, fleet, tokens):
    akid, secret, _ = tokens.key("app-replay")
    target = signed(tokens, akid, secret)
    assert ws_attempt(tgw, fleet, target, "app-replay").accepted
    again = ws_attempt(tgw, fleet, target, "app-replay")
    assert (again.stage, again.code) == ("http", 403)
    record = tgw.events.wait_for(event="connect", kind="signature_replayed")
    assert record["access_key"] == akid


def test_websocket_custom_authorizer_in_headers_and_wrong_path(tgw, fleet, tokens):
    tok = tokens.jwt("hdr-device")
    headers = (("x-amz-customauthorizer-name", "fleet-jwt"), ("x-amz-customauthorizer-signature",
                                                             tokens.signature(tok)), ("token", tok))
    ok = attempt(tgw, fleet, "hdr-device", websocket_target="/mqtt", headers=headers)
    assert ok.accepted
    bad = attempt(tgw, fleet, "hdr-device", websocket_target="/mqtt",
                  headers=headers[:1] + (("x-amz-customauthorizer-signature", tokens.signature("x")),) + headers[2:])
    assert (bad.stage, bad.code) == ("http", 403)
    assert tgw.events.wait_for(event="connect", kind="token_signature_invalid", transport="websocket")[
        "authorizer"] == "fleet-jwt"
    lost = attempt(tgw, fleet, "hdr-device", websocket_target="/other")
    assert (lost.stage, lost.code) == ("http", 404)


def test_no_credentials_at_all_is_refused_in_mqtt(tgw, fleet):
    result = attempt(tgw, fleet, "anonymous")
    assert (result.stage, result.code) == ("mqtt", 0x87)
    assert tgw.events.wait_for(event="connect", client_id="anonymous")["kind"] == "authorizer_missing"


def test_certificate_listener_still_requires_a_certificate(tgw, fleet):
    # the token listener is a second port: the mTLS one keeps refusing devices without certificates
    result = run(try_connect("127.0.0.1", tgw.port, fleet.store.paths.root_cert, client_id="nocert"))
    assert result.stage in ("tls", "closed") and not result.accepted


# --------------------------------------------------------------------------------------------- live changes

def test_deactivating_a_key_or_authorizer_closes_live_sessions(tgw, fleet, sdk, tokens):
    akid, secret, _ = tokens.key("app-revoked")
    ws = sdk(mqtt5_client_builder.websockets_with_default_aws_signing, region="us-east-1",
             credentials_provider=crt_auth.AwsCredentialsProvider.new_static(akid, secret), client_id="app-rev")
    assert ws.start()
    fleet.registry.set_access_key_status(akid, "INACTIVE")
    record = tgw.events.wait_for(event="disconnect", client_id="app-rev", kind="access_key_inactive")
    assert record["access_key"] == akid and "(registry change)" in record["reason"]

    fleet.registry.create_authorizer("short-lived", "jwt", config=fleet.registry.get_authorizer("open-jwt").config,
                                     signing_disabled=True, policies=["token-devices"])
    tok = tokens.jwt("dev-deleted")
    mq = sdk(mqtt5_client_builder.direct_with_custom_authorizer, client_id="dev-deleted",
             auth_authorizer_name="short-lived", auth_password=tok.encode())
    assert mq.start()
    fleet.registry.delete_authorizer("short-lived")
    record = tgw.events.wait_for(event="disconnect", client_id="dev-deleted", kind="authorizer_unknown")
    assert record["authorizer"] == "short-lived"


def test_token_expiry_disconnects_the_session(tgw, fleet, tokens):
    # 3 s of the 60 s leeway left (disconnectAfter 3 s, under the 5 s read wait): room to connect on a loaded machine
    tok = tokens.jwt("brief", exp=-57)
    tgw.sync(fleet.registry)

    async def session():
        from devices.tokens import TokenLink, client_context
        from gateway.mqtt import Connect, encode

        link = await TokenLink.open("127.0.0.1", tgw.gateway.token_port,
                                    client_context(fleet.store.paths.root_cert, alpn="mqtt"))
        await link.send(encode(Connect("brief", protocol_level=5, username=username(tokens, tok))))
        first = await link.receive()
        rest = b""
        while (chunk := await link.receive(WAIT)):
            rest += chunk
        link.close()
        return first, rest

    first, rest = run(session())
    assert first[:1] == b"\x20" and first[3] == 0  # CONNACK success
    assert rest[:1] == b"\xe0" and rest[2] == 0x98  # DISCONNECT, administrative action
    record = tgw.events.wait_for(event="disconnect", client_id="brief", kind="disconnect_after")
    assert record["authorizer"] == "fleet-jwt"
