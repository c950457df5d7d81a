"""Fleet provisioning by claim, the device side: what AWS's fleet-provisioning sample does, on the AWS IoT Device SDK.

A device holding only the (shared) claim certificate connects, asks for its own certificate --
CreateCertificateFromCsr with a key it made itself (default: the key never leaves the device), or
CreateKeysAndCertificate (the server makes the key) -- then RegisterThing with the certificate ownership token and
the template's parameters, and writes its new identity as every other device directory (``device.pem``,
``device.key`` 0600, ``root-ca.pem``). The SDK's ``awsiot.iotidentity.IotIdentityClient`` is used unchanged, over
``mqtt_connection_builder.mtls_from_path`` held to TLS 1.2 like the awsiotsdk connector. Works the same against
the local gateway and against AWS IoT Core (a thing's name then comes from the template).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path

from awscrt import mqtt as crt_mqtt
from awsiot import iotidentity, mqtt_connection_builder
from cryptography.hazmat.primitives import serialization

from certs.errors import IotgateError
from certs.keys import load_private_key
from devices.connectors.awsiotsdk import tls_policy
from devices.identity import make_key_and_csr, write_device_dir


class ClaimError(IotgateError):
    exit_code = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Provisioned:
    thing: str
    certificate_id: str
    directory: Path
    device_configuration: Mapping[str, str]


class _Reply:
    """The first accepted or rejected answer of one operation."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.accepted = None
        self.rejected = None

    def accept(self, response) -> None:
        self.accepted = response
        self.done.set()

    def reject(self, error) -> None:
        self.rejected = error
        self.done.set()

    def wait(self, what: str, timeout: float):
        if not self.done.wait(timeout):
            raise ClaimError(f"{what}: no answer within {timeout:g} s (is the claim policy allowing "
                             "iot:Subscribe/iot:Receive on its reply topics?)")
        if self.rejected is not None:
            e = self.rejected
            raise ClaimError(f"{what} rejected: {e.status_code} {e.error_code}: {e.error_message}")
        return self.accepted


def provision_by_claim(*, endpoint: str, port: int, ca_file: str, claim_cert: str, claim_key: str, template: str,
                       parameters: Mapping[str, str], devices_dir: Path, client_id: str, own_key: bool = True,
                       timeout: float = 10.0) -> Provisioned:
    """Onboard one device from the claim certificate (see the module docstring)."""
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=endpoint, port=port, cert_filepath=claim_cert, pri_key_filepath=claim_key, ca_filepath=ca_file,
        client_id=client_id, clean_session=True, keep_alive_secs=30, enable_metrics_collection=False,
        cipher_pref=tls_policy())
    try:
        connection.connect().result(timeout)
    except Exception as exc:  # noqa: BLE001 - a CRT failure or a refused CONNACK
        raise ClaimError(f"the claim certificate could not connect to {endpoint}:{port}: {exc}") from None
    try:
        identity = iotidentity.IotIdentityClient(connection)
        qos = crt_mqtt.QoS.AT_LEAST_ONCE
        cert_reply, thing_reply = _Reply(), _Reply()
        subscriptions = []
        if own_key:
            key, csr = make_key_and_csr(client_id)
            request = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
            subscriptions += [identity.subscribe_to_create_certificate_from_csr_accepted(request, qos, cert_reply.accept),
                              identity.subscribe_to_create_certificate_from_csr_rejected(request, qos, cert_reply.reject)]
        else:
            key = None
            request = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
            subscriptions += [identity.subscribe_to_create_keys_and_certificate_accepted(request, qos, cert_reply.accept),
                              identity.subscribe_to_create_keys_and_certificate_rejected(request, qos, cert_reply.reject)]
        request = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
        subscriptions += [identity.subscribe_to_register_thing_accepted(request, qos, thing_reply.accept),
                          identity.subscribe_to_register_thing_rejected(request, qos, thing_reply.reject)]
        for future, topic in subscriptions:
            try:
                future.result(timeout)
            except Exception as exc:  # noqa: BLE001
                raise ClaimError(f"subscription to {topic} refused: {exc} (check the claim policy)") from None
        if own_key:
            pem_csr = csr.public_bytes(serialization.Encoding.PEM).decode()
            identity.publish_create_certificate_from_csr(
                iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=pem_csr), qos).result(timeout)
            created = cert_reply.wait("CreateCertificateFromCsr", timeout)
        else:
            identity.publish_create_keys_and_certificate(
                iotidentity.CreateKeysAndCertificateRequest(), qos).result(timeout)
            created = cert_reply.wait("CreateKeysAndCertificate", timeout)
            key = serialization.load_pem_private_key(created.private_key.encode(), None)
        identity.publish_register_thing(iotidentity.RegisterThingRequest(
            template_name=template, certificate_ownership_token=created.certificate_ownership_token,
            parameters=dict(parameters)), qos).result(timeout)
        registered = thing_reply.wait("RegisterThing", timeout)
    finally:
        try:
            connection.disconnect().result(timeout)
        except Exception:  # noqa: BLE001 - the connection is going away either way
            pass
    thing = registered.thing_name or client_id
    devices_dir.mkdir(parents=True, exist_ok=True)
    files = write_device_dir(devices_dir, thing, key, created.certificate_pem.encode(), Path(ca_file).read_bytes())
    return Provisioned(thing, created.certificate_id, files.directory, dict(registered.device_configuration or {}))


def check_claim_files(cert: Path, key: Path) -> None:
    """Fail early, naming the file, when the claim identity cannot be read."""
    if not cert.is_file():
        raise ClaimError(f"{cert}: claim certificate not found")
    load_private_key(key)
