"""AWS IoT provisioning templates, pure: parse a template body, resolve it with parameters, get the resources.

No I/O, no clock: :func:`parse` checks a body (JSON text or a mapping) and returns a :class:`Template`;
:meth:`Template.resolve` takes the parameter values (a device's ``parameters``, or what JITP extracts from the
certificate) and returns a :class:`Resolved`: the things, certificates and policies to provision and the
``DeviceConfiguration``. Applying them to a registry is the caller's part.

Sections, as AWS IoT's developer guide ("Provisioning templates") describes them, with CloudFormation's
semantics where it defers to them:

- ``Parameters``: name -> ``{"Type": "String", "Default": ...}``; a parameter without a value and without a
  default is an error (AWS: ``InvalidRequestException``); values are strings, as AWS passes them.
- ``Mappings`` for ``Fn::FindInMap``; ``Conditions`` (``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``,
  ``Condition``) for ``Fn::If`` and for a resource's ``Condition`` key (a resource whose condition is false is
  not provisioned).
- ``Resources``: logical name -> ``{"Type": "AWS::IoT::Thing" | "AWS::IoT::Certificate" | "AWS::IoT::Policy",
  "Properties": {...}, "OverrideSettings": {...}}``. At most one thing and one certificate, as AWS IoT requires.
- ``DeviceConfiguration`` (fleet provisioning): returned to the device as resolved, string values only.
- Intrinsic functions: ``Ref``, ``Fn::Join``, ``Fn::Sub``, ``Fn::Split``, ``Fn::Select``, ``Fn::If``,
  ``Fn::FindInMap``, ``Fn::Base64``; in conditions ``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``.

Every error is a :class:`TemplateError` naming where in the template it is (``Resources.thing.Properties.ThingName``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

THING = "AWS::IoT::Thing"
CERTIFICATE = "AWS::IoT::Certificate"
POLICY = "AWS::IoT::Policy"
RESOURCE_TYPES = (THING, CERTIFICATE, POLICY)

#: What JITP extracts from a device certificate (AWS::IoT::Certificate::Id is the certificate id, not a field).
CERTIFICATE_PARAMETERS = (
    "AWS::IoT::Certificate::Country", "AWS::IoT::Certificate::Organization",
    "AWS::IoT::Certificate::OrganizationalUnit", "AWS::IoT::Certificate::DistinguishedNameQualifier",
    "AWS::IoT::Certificate::StateName", "AWS::IoT::Certificate::CommonName",
    "AWS::IoT::Certificate::SerialNumber", "AWS::IoT::Certificate::Id",
)

MAX_BODY = 10_240  # characters of template body (AWS IoT's templateBody limit)
_SECTIONS = ("AWSTemplateFormatVersion", "Description", "Parameters", "Mappings", "Conditions", "Resources",
             "DeviceConfiguration")
_THING_PROPS = ("ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup", "PackageVersions")
_CERT_PROPS = ("CertificateId", "CertificateSigningRequest", "CertificatePem", "CACertificatePem", "Status")
_POLICY_PROPS = ("PolicyName", "PolicyDocument")
_THING_OVERRIDES = {"AttributePayload": ("MERGE", "REPLACE", "FAIL", "DO_NOTHING"),
                    "ThingTypeName": ("REPLACE", "FAIL", "DO_NOTHING"),
                    "ThingGroups": ("REPLACE", "FAIL", "DO_NOTHING")}
_CERT_OVERRIDES = {"Status": ("REPLACE", "FAIL", "DO_NOTHING")}
_CERT_STATUSES = ("ACTIVE", "INACTIVE")
_FUNCTIONS = ("Ref", "Fn::Join", "Fn::Sub", "Fn::Split", "Fn::Select", "Fn::If", "Fn::FindInMap", "Fn::Base64")
_CONDITION_FUNCTIONS = ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition")
_SUB = re.compile(r"\$\{([^}]*)\}")


class TemplateError(ValueError):
    """A template that cannot be used, or a value it cannot be resolved with. ``where`` is the path in it."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


# ------------------------------------------------------------------------------------------------ resources


@dataclasses.dataclass(frozen=True, slots=True)
class ThingResource:
    logical_name: str
    thing_name: str
    thing_type: str | None = None
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    thing_groups: tuple[str, ...] = ()
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateResource:
    logical_name: str
    certificate_id: str | None = None
    csr: str | None = None
    pem: str | None = None
    ca_pem: str | None = None
    status: str = "ACTIVE"
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyResource:
    logical_name: str
    policy_name: str | None = None
    document: str | None = None  # JSON text of a policy to create (named by the caller)


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    thing: ThingResource | None
    certificate: CertificateResource | None
    policies: tuple[PolicyResource, ...]
    device_configuration: Mapping[str, str]
    parameters: Mapping[str, str]


# ------------------------------------------------------------------------------------------------ the template


@dataclasses.dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    type: str
    default: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    parameters: Mapping[str, Parameter]
    mappings: Mapping[str, Any]
    conditions: Mapping[str, Any]
    resources: Mapping[str, Mapping[str, Any]]
    device_configuration: Mapping[str, Any]

    def resolve(self, values: Mapping[str, Any]) -> Resolved:
        """The resources of this template for these parameter values (see the module docstring)."""
        params: dict[str, str] = {}
        for name, p in self.parameters.items():
            if name in values and values[name] is not None:
                value = values[name]
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise TemplateError(f"parameters.{name}", f"must be a string, got {type(value).__name__}")
                params[name] = str(value)
            elif p.default is not None:
                params[name] = p.default
            else:
                raise TemplateError(f"Parameters.{name}", "no value given and no Default")
        ctx = _Context(params, self.mappings, self.conditions)
        thing = certificate = None
        policies = []
        for logical, res in self.resources.items():
            where = f"Resources.{logical}"
            if "Condition" in res and not ctx.condition(res["Condition"], f"{where}.Condition"):
                continue
            props = ctx.value(res.get("Properties", {}), f"{where}.Properties")
            overrides = res.get("OverrideSettings", {})
            kind = res["Type"]
            if kind == THING:
                thing = _thing(logical, props, overrides, where)
            elif kind == CERTIFICATE:
                certificate = _certificate(logical, props, overrides, where)
            else:
                policies.append(_policy(logical, props, where))
        config = ctx.value(self.device_configuration, "DeviceConfiguration")
        for key, value in config.items():
            if not isinstance(value, str):
                raise TemplateError(f"DeviceConfiguration.{key}", "resolves to a non-string value")
        return Resolved(thing, certificate, tuple(policies), config, params)


def parse(body: str | Mapping[str, Any]) -> Template:
    """A checked template from its body (JSON text or an already parsed mapping)."""
    if isinstance(body, str):
        if len(body) > MAX_BODY:
            raise TemplateError("", f"the template body has {len(body)} characters, at most {MAX_BODY}")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise TemplateError("", f"not JSON: {exc}") from None
    else:
        doc = body
    if not isinstance(doc, Mapping):
        raise TemplateError("", "a template is a JSON object with Parameters and Resources")
    for key in doc:
        if key not in _SECTIONS:
            raise TemplateError(key, f"unknown section; a template has {', '.join(_SECTIONS)}")
    parameters = {}
    for name, spec in _mapping(doc.get("Parameters", {}), "Parameters").items():
        where = f"Parameters.{name}"
        spec = _mapping(spec, where)
        for key in spec:
            if key not in ("Type", "Default", "Description", "AllowedValues"):
                raise TemplateError(f"{where}.{key}", "unknown key; a parameter has Type and Default")
        ptype = spec.get("Type")
        if ptype != "String":
            raise TemplateError(f"{where}.Type", f"{ptype!r} is not supported: parameters are of Type String")
        default = spec.get("Default")
        if default is not None and not isinstance(default, str):
            raise TemplateError(f"{where}.Default", "must be a string")
        parameters[name] = Parameter(name, ptype, default)
    mappings = _mapping(doc.get("Mappings", {}), "Mappings")
    conditions = _mapping(doc.get("Conditions", {}), "Conditions")
    resources = _mapping(doc.get("Resources"), "Resources") if "Resources" in doc else None
    if not resources:
        raise TemplateError("Resources", "missing or empty: a template declares at least one resource")
    counts = {t: 0 for t in RESOURCE_TYPES}
    for logical, res in resources.items():
        where = f"Resources.{logical}"
        res = _mapping(res, where)
        for key in res:
            if key not in ("Type", "Properties", "OverrideSettings", "Condition"):
                raise TemplateError(f"{where}.{key}", "unknown key; a resource has Type, Properties, "
                                    "OverrideSettings and Condition")
        kind = res.get("Type")
        if kind not in RESOURCE_TYPES:
            raise TemplateError(f"{where}.Type", f"{kind!r} is not one of {', '.join(RESOURCE_TYPES)}")
        counts[kind] += 1
        allowed = {THING: _THING_PROPS, CERTIFICATE: _CERT_PROPS, POLICY: _POLICY_PROPS}[kind]
        for key in _mapping(res.get("Properties", {}), f"{where}.Properties"):
            if key not in allowed:
                raise TemplateError(f"{where}.Properties.{key}",
                                    f"unknown property of {kind}; it has {', '.join(allowed)}")
        legal = {THING: _THING_OVERRIDES, CERTIFICATE: _CERT_OVERRIDES, POLICY: {}}[kind]
        for key, value in _mapping(res.get("OverrideSettings", {}), f"{where}.OverrideSettings").items():
            if key not in legal:
                raise TemplateError(f"{where}.OverrideSettings.{key}", f"{kind} has no such override setting")
            if value not in legal[key]:
                raise TemplateError(f"{where}.OverrideSettings.{key}",
                                    f"{value!r} is not one of {', '.join(legal[key])}")
        if "Condition" in res and res["Condition"] not in conditions:
            raise TemplateError(f"{where}.Condition", f"names no condition of the Conditions section")
        _check_functions(res.get("Properties", {}), f"{where}.Properties", parameters, conditions)
    for kind in (THING, CERTIFICATE):
        if counts[kind] > 1:
            raise TemplateError("Resources", f"{counts[kind]} resources of type {kind}; a template has at most one")
    config = _mapping(doc.get("DeviceConfiguration", {}), "DeviceConfiguration")
    _check_functions(config, "DeviceConfiguration", parameters, conditions)
    return Template(parameters, mappings, conditions, resources, config)


# ------------------------------------------------------------------------------------------------ evaluation


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TemplateError(where, f"must be a JSON object, got {type(value).__name__}")
    return value


def _function(value: Any) -> tuple[str, Any] | None:
    if isinstance(value, Mapping) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref" or key.startswith("Fn::"):
            return key, arg
    return None


def _check_functions(value: Any, where: str, parameters: Mapping[str, Parameter], conditions: Mapping) -> None:
    """Static checks: known functions only, Ref to declared parameters, Fn::If to declared conditions."""
    fn = _function(value)
    if fn is not None:
        name, arg = fn
        if name not in _FUNCTIONS:
            raise TemplateError(where, f"{name} is not supported here; use one of {', '.join(_FUNCTIONS)}")
        if name == "Ref" and (not isinstance(arg, str) or arg not in parameters):
            raise TemplateError(where, f"Ref {arg!r} names no parameter of the Parameters section")
        if name == "Fn::If" and (not isinstance(arg, list) or len(arg) != 3 or arg[0] not in conditions):
            raise TemplateError(where, "Fn::If takes [condition name, value if true, value if false] with a "
                                "condition of the Conditions section")
        _check_functions(arg, f"{where}.{name}", parameters, conditions)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_functions(item, f"{where}.{key}", parameters, conditions)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_functions(item, f"{where}[{i}]", parameters, conditions)


class _Context:
    def __init__(self, params: Mapping[str, str], mappings: Mapping, conditions: Mapping) -> None:
        self.params = params
        self.mappings = mappings
        self.conditions = conditions
        self._decided: dict[str, bool] = {}
        self._deciding: set[str] = set()

    def condition(self, name: Any, where: str) -> bool:
        if not isinstance(name, str) or name not in self.conditions:
            raise TemplateError(where, f"names no condition of the Conditions section: {name!r}")
        if name not in self._decided:
            if name in self._deciding:
                raise TemplateError(f"Conditions.{name}", "refers to itself")
            self._deciding.add(name)
            self._decided[name] = self._truth(self.conditions[name], f"Conditions.{name}")
            self._deciding.discard(name)
        return self._decided[name]

    def _truth(self, value: Any, where: str) -> bool:
        fn = _function(value) if not (isinstance(value, Mapping) and "Condition" in value and len(value) == 1) \
            else ("Condition", value["Condition"])
        if fn is None:
            raise TemplateError(where, "a condition is Fn::Equals, Fn::Not, Fn::And, Fn::Or or Condition")
        name, arg = fn
        if name == "Condition":
            return self.condition(arg, where)
        if name == "Fn::Equals":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(where, "Fn::Equals takes [value, value]")
            return self.value(arg[0], f"{where}[0]") == self.value(arg[1], f"{where}[1]")
        if name == "Fn::Not":
            if not isinstance(arg, list) or len(arg) != 1:
                raise TemplateError(where, "Fn::Not takes [condition]")
            return not self._truth(arg[0], f"{where}[0]")
        if name in ("Fn::And", "Fn::Or"):
            if not isinstance(arg, list) or not 2 <= len(arg) <= 10:
                raise TemplateError(where, f"{name} takes 2 to 10 conditions")
            results = (self._truth(c, f"{where}[{i}]") for i, c in enumerate(arg))
            return all(results) if name == "Fn::And" else any(results)
        raise TemplateError(where, f"{name} is not a condition function; use one of "
                                   f"{', '.join(_CONDITION_FUNCTIONS)}")

    def value(self, value: Any, where: str) -> Any:
        fn = _function(value)
        if fn is not None:
            return self._call(fn[0], fn[1], where)
        if isinstance(value, Mapping):
            return {k: self.value(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    def _string(self, value: Any, where: str) -> str:
        value = self.value(value, where)
        if not isinstance(value, str):
            raise TemplateError(where, f"must resolve to a string, got {type(value).__name__}")
        return value

    def _list(self, value: Any, where: str) -> list:
        value = self.value(value, where)
        if not isinstance(value, list):
            raise TemplateError(where, f"must resolve to a list, got {type(value).__name__}")
        return value

    def _call(self, name: str, arg: Any, where: str) -> Any:
        at = f"{where}.{name}"
        if name == "Ref":
            if arg not in self.params:
                raise TemplateError(at, f"Ref {arg!r} names no parameter")
            return self.params[arg]
        if name == "Fn::Join":
            if not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[0], str):
                raise TemplateError(at, "Fn::Join takes [delimiter, [values]]")
            items = self._list(arg[1], f"{at}[1]")
            return arg[0].join(self._string(v, f"{at}[1][{i}]") for i, v in enumerate(items))
        if name == "Fn::Sub":
            if isinstance(arg, str):
                text, names = arg, {}
            elif isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and isinstance(arg[1], Mapping):
                text, names = arg[0], {k: self._string(v, f"{at}[1].{k}") for k, v in arg[1].items()}
            else:
                raise TemplateError(at, "Fn::Sub takes a string, or [string, {name: value}]")

            def substitute(match: re.Match) -> str:
                key = match.group(1)
                if key.startswith("!"):  # ${!Literal} is written as ${Literal}
                    return "${" + key[1:] + "}"
                if key in names:
                    return names[key]
                if key in self.params:
                    return self.params[key]
                raise TemplateError(at, f"${{{key}}} names no parameter nor variable")
            return _SUB.sub(substitute, text)
        if name == "Fn::Split":
            if not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[0], str) or not arg[0]:
                raise TemplateError(at, "Fn::Split takes [delimiter, string]")
            return self._string(arg[1], f"{at}[1]").split(arg[0])
        if name == "Fn::Select":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(at, "Fn::Select takes [index, [values]]")
            index = self.value(arg[0], f"{at}[0]")
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise TemplateError(f"{at}[0]", f"index {index!r} is not a whole number") from None
            items = self._list(arg[1], f"{at}[1]")
            if not 0 <= index < len(items):
                raise TemplateError(at, f"index {index} is out of range: the list has {len(items)} values")
            return items[index]
        if name == "Fn::If":
            cond, yes, no = arg
            return self.value(yes if self.condition(cond, f"{at}[0]") else no, at)
        if name == "Fn::FindInMap":
            if not isinstance(arg, list) or len(arg) != 3:
                raise TemplateError(at, "Fn::FindInMap takes [map name, top-level key, second-level key]")
            keys = [self._string(k, f"{at}[{i}]") for i, k in enumerate(arg)]
            try:
                return self.mappings[keys[0]][keys[1]][keys[2]]
            except (KeyError, TypeError):
                raise TemplateError(at, f"Mappings has no {keys[0]}.{keys[1]}.{keys[2]}") from None
        if name == "Fn::Base64":
            return base64.b64encode(self._string(arg, at).encode()).decode()
        raise TemplateError(at, f"{name} is not supported; use one of {', '.join(_FUNCTIONS)}")


def _opt_string(props: Mapping, key: str, where: str) -> str | None:
    value = props.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TemplateError(f"{where}.Properties.{key}", f"must resolve to a string, got {type(value).__name__}")
    return value


def _thing(logical: str, props: Mapping, overrides: Mapping, where: str) -> ThingResource:
    name = _opt_string(props, "ThingName", where)
    if not name:
        raise TemplateError(f"{where}.Properties.ThingName", "a thing resource needs a ThingName")
    attributes = props.get("AttributePayload", {})
    if not isinstance(attributes, Mapping) or not all(isinstance(v, str) for v in attributes.values()):
        raise TemplateError(f"{where}.Properties.AttributePayload", "must be an object of string values")
    groups = props.get("ThingGroups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise TemplateError(f"{where}.Properties.ThingGroups", "must be a list of strings")
    return ThingResource(logical, name, _opt_string(props, "ThingTypeName", where), dict(attributes), tuple(groups),
                         dict(overrides))


def _certificate(logical: str, props: Mapping, overrides: Mapping, where: str) -> CertificateResource:
    status = _opt_string(props, "Status", where) or "ACTIVE"
    if status not in _CERT_STATUSES:
        raise TemplateError(f"{where}.Properties.Status", f"{status!r} is not one of {', '.join(_CERT_STATUSES)}")
    cert = CertificateResource(logical, _opt_string(props, "CertificateId", where),
                               _opt_string(props, "CertificateSigningRequest", where),
                               _opt_string(props, "CertificatePem", where),
                               _opt_string(props, "CACertificatePem", where), status, dict(overrides))
    given = [k for k in ("CertificateId", "CertificateSigningRequest", "CertificatePem") if props.get(k)]
    if len(given) != 1:
        raise TemplateError(f"{where}.Properties", "a certificate resource has exactly one of CertificateId, "
                            f"CertificateSigningRequest and CertificatePem (given: {', '.join(given) or 'none'})")
    return cert


def _policy(logical: str, props: Mapping, where: str) -> PolicyResource:
    name = _opt_string(props, "PolicyName", where)
    document = props.get("PolicyDocument")
    if isinstance(document, Mapping):
        document = json.dumps(document, separators=(",", ":"))
    if document is not None and not isinstance(document, str):
        raise TemplateError(f"{where}.Properties.PolicyDocument", "must be a policy document (JSON text or object)")
    if (name is None) == (document is None):
        raise TemplateError(f"{where}.Properties", "a policy resource has either PolicyName (an existing policy) "
                            "or PolicyDocument")
    return PolicyResource(logical, name, document)


def certificate_parameters(cert, certificate_id: str) -> dict[str, str]:
    """What JITP extracts from a device certificate's subject (a cryptography x509.Certificate), by parameter name:
    only the attributes the subject has (SerialNumber is the subject's serialNumber attribute, not the certificate's
    serial), and the certificate id."""
    from cryptography.x509.oid import NameOID

    fields = {
        "AWS::IoT::Certificate::SerialNumber": NameOID.SERIAL_NUMBER,
        "AWS::IoT::Certificate::Country": NameOID.COUNTRY_NAME,
        "AWS::IoT::Certificate::Organization": NameOID.ORGANIZATION_NAME,
        "AWS::IoT::Certificate::OrganizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "AWS::IoT::Certificate::DistinguishedNameQualifier": NameOID.DN_QUALIFIER,
        "AWS::IoT::Certificate::StateName": NameOID.STATE_OR_PROVINCE_NAME,
        "AWS::IoT::Certificate::CommonName": NameOID.COMMON_NAME,
    }
    out = {}
    for name, oid in fields.items():
        attrs = cert.subject.get_attributes_for_oid(oid)
        if attrs:
            out[name] = str(attrs[0].value)
    out["AWS::IoT::Certificate::Id"] = certificate_id
    return out
