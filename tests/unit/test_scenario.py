"""Scenario model and loading: tables of documents -> values or the error naming the key."""

from __future__ import annotations

import random

import pytest

from devices.chaos import pick, spread_offsets
from devices.scenario import (BUILTIN, Group, PublishSpec, ScenarioError, allocate, connect_schedule, load_scenario,
                              loads_scenario, payload, render, thing_pattern, topic_filter)

GROUP = '[[groups]]\nname = "g"\n'

# (case id, TOML text, the error's key and words)
INVALID = [
    ("not toml", "name = ", "not valid TOML"),
    ("empty", "", "groups: a scenario needs at least one"),
    ("unknown top key", GROUP + "durashun = 3\n", "durashun: unknown key"),
    ("qos 2", GROUP + '[groups.publish]\ntopic = "dt/{thing}/t"\nqos = 2\n', "groups[0].publish.qos: must be 0 or 1"),
    ("topic missing", GROUP + "[groups.publish]\ninterval = 1\n", "groups[0].publish.topic: is required"),
    ("wildcard publish", GROUP + '[groups.publish]\ntopic = "dt/+/t"\n', "groups[0].publish.topic: a topic to publish"),
    ("bad placeholder", GROUP + '[groups.publish]\ntopic = "dt/{thng}/t"\n', "unknown placeholder {thng}"),
    ("expect", GROUP + 'expect = "maybe"\n', "groups[0].expect: must be one of allowed, refused"),
    ("count type", '[[groups]]\nname = "g"\ncount = "ten"\n', "groups[0].count: must be an integer"),
    ("count negative", '[[groups]]\nname = "g"\ncount = -1\n', "groups[0].count: must be >= 0"),
    ("bool as number", "duration = true\n" + GROUP, "duration: must be a number"),
    ("duration cap", "duration = 99999\n" + GROUP, "duration: must be <= 3600"),
    ("name chars", '[[groups]]\nname = "a b"\n', "groups[0].name: letters, digits"),
    ("duplicate name", GROUP + GROUP, "groups[1].name: 'g' is used by groups[0]"),
    ("prefix overlap", GROUP + 'prefix = "x-"\n[[groups]]\nname = "h"\nprefix = "x-a"\n', "groups[1].prefix"),
    ("protocol", GROUP + "[groups.session]\nprotocol = 3\n", "groups[0].session.protocol: must be 4 or 5"),
    ("expiry on 3.1.1", "[session]\nprotocol = 4\nsession_expiry = 10\n" + GROUP, "session.session_expiry: is MQTT 5"),
    ("attacker kind", '[[attackers]]\nkind = "ddos"\n', "attackers[0].kind: must be one of"),
    ("attacker count", '[[attackers]]\nkind = "expired"\ncount = 1000\n', "attackers[0].count: must be <= 100"),
    ("chaos kind", GROUP + '[[chaos]]\nkind = "meteor"\nat = 1\n', "chaos[0].kind: must be one of"),
    ("chaos at required", GROUP + '[[chaos]]\nkind = "abort"\n', "chaos[0].at: is required"),
    ("chaos after end", "duration = 5\n" + GROUP + '[[chaos]]\nkind = "abort"\nat = 9\n', "chaos[0].at: 9 s is not"),
    ("fraction", GROUP + '[[rotations]]\nat = 1\nfraction = 2\n', "rotations[0].fraction: must be <= 1"),
    ("unknown group key", GROUP + "colour = 1\n", "groups[0].colour: unknown key"),
    ("subscribe item", GROUP + "subscribe = [1]\n", "groups[0].subscribe[0]: must be a topic filter"),
    ("groups not list", "groups = 3\n", "groups: must be a list"),
    ("rate zero", "rate = 0\n" + GROUP, "rate: must be > 0"),
]


@pytest.mark.parametrize("text, message", [pytest.param(t, m, id=i) for i, t, m in INVALID])
def test_invalid_scenarios_name_the_key(text, message):
    with pytest.raises(ScenarioError) as info:
        loads_scenario(text, source="s.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("s.toml: ")


def test_full_document():
    s = loads_scenario("""
name = "full"
duration = 30
rate = 20
reconnect_within = 7
[session]
protocol = 4
keep_alive = 30
[[groups]]
name = "sensors"
weight = 3
subscribe = ["cmd/{thing}/#"]
[groups.publish]
topic = "dt/{thing}/t"
interval = 0.5
qos = 0
size = 100
[groups.commands]
topic = "cmd/{thing}/go"
response = "cmd/{thing}/resp/go"
[[groups]]
name = "cams"
count = 2
expect = "refused"
[groups.session]
protocol = 5
session_expiry = 60
[[attackers]]
kind = "connect-flood"
connects = 30
[[chaos]]
kind = "upstream-kill"
at = 10
downtime = 2
[[rotations]]
at = 5
fraction = 1.0
spread = 3
""")
    sensors, cams = s.groups
    assert (s.name, s.duration, s.rate, s.reconnect_within) == ("full", 30.0, 20.0, 7.0)
    assert sensors.session.protocol == 4 and sensors.session.keep_alive == 30
    assert sensors.publish == PublishSpec("dt/{thing}/t", 0.5, 0, sensors.publish.payload, 100)
    assert sensors.commands.response == "cmd/{thing}/resp/go" and sensors.thing_prefix == "sim-sensors-"
    assert cams.count == 2 and cams.expect == "refused" and cams.session.session_expiry == 60
    assert s.attackers[0].connects == 30 and s.chaos[0].downtime == 2.0
    assert s.chaos_end == 12.0  # upstream back at 10 + 2; rotations end at 5 + 3


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtins_load(name):
    s = load_scenario(name)
    assert s.name == name and s.groups


def test_unknown_scenario_lists_builtins(tmp_path):
    with pytest.raises(ScenarioError, match="built-in: telemetry, command-response, reconnect-storm"):
        load_scenario(str(tmp_path / "nope.toml"))


def test_file_scenario(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GROUP)
    assert load_scenario(str(path)).name == "mine"


def g(name: str, count=None, weight=1.0) -> Group:
    return Group(name=name, count=count, weight=weight)


ALLOCATIONS = [
    ("one group", [g("a")], 10, {"a": 10}),
    ("even", [g("a"), g("b")], 10, {"a": 5, "b": 5}),
    ("remainder to the earlier", [g("a"), g("b")], 11, {"a": 6, "b": 5}),
    ("weights", [g("a", weight=3), g("b")], 8, {"a": 6, "b": 2}),
    ("fixed count", [g("a", count=3), g("b")], 10, {"a": 3, "b": 7}),
    ("fixed exceeds total", [g("a", count=12), g("b")], 10, {"a": 12, "b": 0}),
    ("only fixed", [g("a", count=2)], 100, {"a": 2}),
    ("zero weight", [g("a", weight=0)], 5, {"a": 0}),
    ("largest remainder", [g("a"), g("b"), g("c")], 2, {"a": 1, "b": 1, "c": 0}),
]


@pytest.mark.parametrize("groups, total, expected", [pytest.param(*c[1:], id=c[0]) for c in ALLOCATIONS])
def test_allocate(groups, total, expected):
    assert allocate(groups, total) == expected


TEMPLATES = [
    ("dt/{thing}/t", "dt/+/t", "dt/dev-1/t", "dev-1"),
    ("{group}/{thing}/x/{seq}", "+/+/x/+", "g/dev-2/x/7", "dev-2"),
    ("cmd/{thing}/resp/reboot", "cmd/+/resp/reboot", "cmd/a.b/resp/reboot", "a.b"),
]


@pytest.mark.parametrize("template, filter_, topic, thing", TEMPLATES)
def test_topic_templates(template, filter_, topic, thing):
    assert topic_filter(template) == filter_
    assert thing_pattern(template).match(topic).group("thing") == thing


def test_render_and_payload():
    assert render("dt/{thing}/{seq}", thing="d", seq=4) == "dt/d/4"
    spec = PublishSpec("t", payload='{"thing":"{thing}","seq":{seq},"ts":{ts}}', size=64)
    data = payload(spec, thing="d", group="g", seq=3, ts=1.5)
    assert len(data) == 64 and data.startswith(b'{"thing":"d","seq":3,"ts":1.500000}')


@pytest.mark.parametrize("count, rate, expected", [(3, None, [0, 0, 0]), (3, 2.0, [0, 0.5, 1.0]), (0, 5.0, [])])
def test_connect_schedule(count, rate, expected):
    assert connect_schedule(count, rate) == expected


@pytest.mark.parametrize("n, fraction, chosen", [(10, 0.0, 0), (10, 0.25, 3), (10, 1.0, 10), (0, 0.5, 0), (3, 0.01, 1)])
def test_pick(n, fraction, chosen):
    members = list(range(n))
    got = pick(members, fraction, random.Random(1))
    assert len(got) == chosen and got == sorted(got) and set(got) <= set(members)


@pytest.mark.parametrize("count, spread, expected", [(1, 5, [0.0]), (3, 0, [0.0] * 3), (3, 4, [0.0, 2.0, 4.0])])
def test_spread_offsets(count, spread, expected):
    assert spread_offsets(count, spread) == expected


def test_the_shipped_example_scenario_uses_every_attacker_kind():
    from pathlib import Path

    from devices.scenario import ATTACKER_KINDS, load_scenario

    path = Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "attackers.toml"
    scenario = load_scenario(str(path))
    assert {a.kind for a in scenario.attackers} == set(ATTACKER_KINDS)
    assert scenario.chaos and scenario.rotations


def test_a_foreign_ca_of_the_scenario_is_read_relative_to_it(tmp_path):
    from devices.scenario import ScenarioError, load_scenario, loads_scenario

    text = '[[attackers]]\nkind = "foreign-ca"\nca_cert = "ca.pem"\nca_key = "ca.key"\n'
    (tmp_path / "s.toml").write_text(text)
    [attacker] = load_scenario(str(tmp_path / "s.toml")).attackers
    assert (attacker.ca_cert, attacker.ca_key) == (str(tmp_path / "ca.pem"), str(tmp_path / "ca.key"))
    with pytest.raises(ScenarioError, match="attackers\\[0\\].ca_key: ca_cert and ca_key go together"):
        loads_scenario('[[attackers]]\nkind = "foreign-ca"\nca_cert = "ca.pem"\n')
    with pytest.raises(ScenarioError, match='attackers\\[0\\].ca_cert: is for kind = "foreign-ca" only'):
        loads_scenario('[[attackers]]\nkind = "revoked"\nca_cert = "a"\nca_key = "b"\n')


def test_the_shipped_plain_broker_scenario_parses():
    from pathlib import Path

    from devices.scenario import load_scenario

    path = Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "plain-broker.toml"
    scenario = load_scenario(str(path))
    assert {"revoked", "client-id-spoof", "wildcard-subscribe"} <= {a.kind for a in scenario.attackers}
