"""`$aws/...` topics answered by the gateway itself: Device Shadow, Jobs and lifecycle events.

Nothing a device publishes to `$aws/...` goes to the broker: a session hands an allowed request to the
services, and the services' answers are published by the gateway. Every step is a policy decision, as on AWS:

1. the device's PUBLISH on a request topic is decided by ``iot:Publish`` on ``topic/<request topic>`` in its
   session (a refusal is a refused publish like any other: PUBACK 0x87 on MQTT 5, closed on 3.1.1); a
   `$aws/...` topic no service answers is refused as reserved;
2. a SUBSCRIBE to a reply topic (``.../accepted``, ``.../delta``, ``$aws/events/...``) is decided by
   ``iot:Subscribe`` and then held by the broker like any subscription;
3. the answers are published to the broker by the gateway's own services link (``runtime.ServiceLink``), so
   they reach subscribers on every gateway of the fleet, and each delivery is decided by ``iot:Receive`` in
   the subscriber's session.

Adding a service (fleet provisioning is one) takes three steps:

    class ProvisioningService:
        name = "provisioning"
        filters = ("$aws/certificates/create/json", "$aws/provisioning-templates/+/provision/json")

        def handle(self, request: Request) -> list[Message]:
            # request.caller: client_id, principal_id, thing, source_ip; request.topic, .payload, .now
            return [Message(request.topic + "/accepted", orjson.dumps({...}))]

    hub.dispatcher.register(ProvisioningService(store))   # in ServiceHub.__init__ (gateway.services.runtime)

The hub holds the registry (``hub.registry``: things, certificates, policies) and publishes events no request
asked for (``hub.publish(Message(...))``, on the loop: `$aws/events/certificates/registered/<caId>` is one).
``handle`` runs on the services' one worker thread, in arrival order, and may use the registry database
(``store.ServiceStore`` for tables of its own, created on first use; the registry itself for things,
certificates and policies). Bad input is answered on the ``/rejected`` topic, never raised; an exception is
logged as an internal error and answered by nothing. The state logic stays pure, as ``shadow`` and ``jobs``
are: data in, documents out, time passed in.

Modules: ``base`` (Caller, Request, Message, Service, Dispatcher), ``shadow`` / ``jobs`` / ``lifecycle`` (pure
cores), ``shadow_service`` / ``jobs_service`` (topics, storage, the operator's side), ``store`` (tables,
outbox), ``runtime`` (worker thread, services link, outbox). The operator commands are
``iotgate shadow`` and ``iotgate job`` (iotgate/commands).
"""

from gateway.services.base import Caller, Dispatcher, Message, Request, Service

__all__ = ["Caller", "Dispatcher", "Message", "Request", "Service"]
