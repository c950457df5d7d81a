"""Qualification suites: TOML documents listing cases in the order they run, with their settings. Pure (reading
the TOML text given; built-in suites are package data).

    name = "my-firmware"
    description = "what this suite is for"

    [settings]                      # given to every case that has the setting
    connect_timeout = 60
    packet_timeout = 10

    [[cases]]
    id = "TLS_Connect"

    [[cases]]
    id = "MQTT_Subscribe"
    topic = "cmd/{thing}/#"         # {thing}: the CN of the device's certificate; {client_id}: its client id
    qos = 1

Built-in: ``device-advisor-qualification`` (the cases AWS's Device Qualification Program requires, where they
apply locally), ``tls-only`` and ``full`` (every case). Errors name the key: ``cases[2].withhold: must be a
number of seconds between 0.05 and 600, not -1``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from certs.errors import IotgateError
from gateway.mqtt.topics import topic_filter_problem, topic_name_problem
from gateway.qualify.catalogue import CASES, COMMON, CaseInfo, Param

__all__ = ["BUILTIN_SUITES", "CaseSpec", "Suite", "SuiteError", "load_suite", "parse_suite"]

BUILTIN_SUITES = ("device-advisor-qualification", "tls-only", "full")


class SuiteError(IotgateError):
    """A suite file is malformed; the message names the key."""


@dataclasses.dataclass(frozen=True, slots=True)
class CaseSpec:
    info: CaseInfo
    settings: Mapping[str, Any]

    @property
    def id(self) -> str:
        return self.info.id

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]


@dataclasses.dataclass(frozen=True, slots=True)
class Suite:
    name: str
    description: str
    cases: tuple[CaseSpec, ...]
    source: str
    base_dir: Path | None = None  # where relative paths in settings (policy files) are read from

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "cases": [{"id": c.id, "settings": dict(c.settings)} for c in self.cases]}


def _check(where: str, param: Param, value: Any) -> Any:
    kind = param.kind
    if kind in ("seconds", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (param.low <= value <= param.high):
            unit = "a number of seconds" if kind == "seconds" else "a number"
            raise SuiteError(f"{where}: must be {unit} between {param.low:g} and {param.high:g}, not {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not (param.low <= value <= param.high):
            raise SuiteError(f"{where}: must be a whole number between {param.low:g} and {param.high:g}, "
                             f"not {value!r}")
        return value
    if kind == "qos":
        if isinstance(value, bool) or value not in (0, 1):
            raise SuiteError(f"{where}: must be 0 or 1 (AWS IoT Core has no QoS 2), not {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SuiteError(f"{where}: must be true or false, not {value!r}")
        return value
    if not isinstance(value, str):
        raise SuiteError(f"{where}: must be a string, not {value!r}")
    if value and kind in ("topic", "filter"):
        sample = value.replace("{thing}", "thing").replace("{client_id}", "client")
        problem = topic_name_problem(sample) if kind == "topic" else topic_filter_problem(sample)
        if problem is not None:
            raise SuiteError(f"{where}: {value!r} is not a valid topic{' filter' if kind == 'filter' else ''} "
                             f"({problem[0]})")
    return value


def parse_suite(data: Mapping[str, Any], *, source: str, base_dir: Path | None = None) -> Suite:
    known_top = {"name", "description", "settings", "cases"}
    for key in data:
        if key not in known_top:
            raise SuiteError(f"{source}: {key}: unknown key; a suite has {', '.join(sorted(known_top))}")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{source}: name: must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{source}: description: must be a string")
    settings = data.get("settings", {})
    if not isinstance(settings, Mapping):
        raise SuiteError(f"{source}: settings: must be a table")
    every_param = dict(COMMON)
    for info in CASES.values():
        every_param.update(info.params)
    for key in settings:
        if key not in every_param:
            raise SuiteError(f"{source}: settings.{key}: no case has this setting; known: "
                             f"{', '.join(sorted(every_param))}")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise SuiteError(f"{source}: cases: a suite needs at least one [[cases]] entry")
    specs = []
    seen = set()
    for i, entry in enumerate(cases):
        where = f"{source}: cases[{i}]"
        if not isinstance(entry, Mapping):
            raise SuiteError(f"{where}: must be a table with an id")
        case_id = entry.get("id")
        info = CASES.get(case_id) if isinstance(case_id, str) else None
        if info is None:
            raise SuiteError(f"{where}.id: unknown case {case_id!r}; known: {', '.join(CASES)}")
        if case_id in seen:
            raise SuiteError(f"{where}.id: {case_id} appears twice")
        seen.add(case_id)
        params = info.all_params()
        values = {}
        for key, param in params.items():
            if key in entry:
                values[key] = _check(f"{where}.{key}", param, entry[key])
            elif key in settings:
                values[key] = _check(f"{source}: settings.{key}", param, settings[key])
            else:
                values[key] = param.default
        for key in entry:
            if key != "id" and key not in params:
                raise SuiteError(f"{where}.{key}: unknown setting for {case_id}; it has "
                                 f"{', '.join(sorted(params))}")
        specs.append(CaseSpec(info, values))
    return Suite(name, description, tuple(specs), source, base_dir)


def load_suite(spec: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    if spec in BUILTIN_SUITES:
        text = resources.files("gateway.qualify").joinpath(f"suites/{spec}.toml").read_text(encoding="utf-8")
        return parse_suite(_toml(text, spec), source=spec)
    path = Path(spec)
    if not path.is_file():
        raise SuiteError(f"{spec}: no such suite file, and not a built-in suite ({', '.join(BUILTIN_SUITES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{spec}: cannot read the suite: {exc.strerror}") from None
    return parse_suite(_toml(text, spec), source=str(path), base_dir=path.parent)


def _toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{source}: not valid TOML: {exc}") from None

