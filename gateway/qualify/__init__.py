"""The device-qualification endpoint: a local, free Device Advisor.

It acts as the endpoint a device under test connects to, misbehaves on purpose (a server certificate for another
name, from an unknown CA, expired, large; TLS 1.0/1.1 only; CONNACK withheld or refused; a DISCONNECT right after
CONNACK) and records what the device does, case by case, as evidence for a verdict.

    suite = load_suite("tls-only")
    result = await Qualification(suite, device, profiles=..., contexts=..., policies=...).run()

Layers: pure values and judges (``clienthello``, ``model``, ``judge``, ``verdict``, ``suite``, ``catalogue``,
``profiles``), then the shell (``tls`` over memory BIOs, ``peer`` on the gateway's MQTT codec, ``endpoint``,
``device``, ``cases``, ``runner``) and the ``report`` writers.
"""

from gateway.qualify.device import CommandDevice, CoroutineDevice, DeviceEndpoint, ExternalDevice
from gateway.qualify.policies import PolicySource
from gateway.qualify.profiles import ServerProfiles
from gateway.qualify.runner import Qualification, RunResult
from gateway.qualify.suite import BUILTIN_SUITES, Suite, SuiteError, load_suite, parse_suite
from gateway.qualify.tls import ContextFactory
from gateway.qualify.verdict import CaseResult, Verdict

__all__ = [
    "BUILTIN_SUITES",
    "CaseResult",
    "CommandDevice",
    "ContextFactory",
    "CoroutineDevice",
    "DeviceEndpoint",
    "ExternalDevice",
    "PolicySource",
    "Qualification",
    "RunResult",
    "ServerProfiles",
    "Suite",
    "SuiteError",
    "Verdict",
    "load_suite",
    "parse_suite",
]
