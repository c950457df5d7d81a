"""The Device Shadow core as a table: stored shadow + request -> messages and the stored result."""

from __future__ import annotations

import orjson
import pytest

from gateway.services import shadow as core
from gateway.services.shadow import Shadow

NOW = 1_700_000_000


def doc(**kw) -> bytes:
    return orjson.dumps(kw)


RED = Shadow(desired={"color": "red", "light": {"on": True, "level": 3}}, reported={"color": "blue"},
             meta_desired={"color": {"timestamp": 1}, "light": {"on": {"timestamp": 1}, "level": {"timestamp": 1}}},
             meta_reported={"color": {"timestamp": 2}}, version=4, exists=True)

# (name, stored shadow, request payload, expected (code, message) of a refusal or None)
REFUSALS = [
    ("not JSON", Shadow(), b"{", (400, "Invalid JSON")),
    ("not an object", Shadow(), b"[1]", (400, "Invalid JSON")),
    ("empty", Shadow(), b"", (400, "Invalid JSON")),
    ("no state", Shadow(), doc(desired={}), (400, "Missing required node: state")),
    ("state not an object", Shadow(), doc(state=[]), (400, "State node must be an object")),
    ("desired not an object", Shadow(), doc(state={"desired": "x"}), (400, "Desired node must be an object")),
    ("reported not an object", Shadow(), doc(state={"reported": 3}), (400, "Reported node must be an object")),
    ("delta is not writable", Shadow(), doc(state={"delta": {}}), (400, "State contains an invalid node")),
    ("version not a number", RED, doc(state={"reported": {}}, version="4"), (400, "Invalid version")),
    ("negative version", RED, doc(state={"reported": {}}, version=-1), (400, "Invalid version")),
    ("boolean version", RED, doc(state={"reported": {}}, version=True), (400, "Invalid version")),
    ("client token over 64 bytes", Shadow(), doc(state={}, clientToken="é" * 33), (400, "Invalid clientToken")),
    ("client token not a string", Shadow(), doc(state={}, clientToken=5), (400, "Invalid clientToken")),
    ("seven levels", Shadow(), doc(state={"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}),
     (400, "JSON contains too many levels of nesting; maximum is 6")),
    ("payload over 8 KiB", Shadow(), doc(state={"reported": {"x": "y" * 8200}}),
     (413, "The payload exceeds the maximum size allowed")),
    ("stale version", RED, doc(state={"desired": {"color": "green"}}, version=3), (409, "Version conflict")),
    ("newer version", RED, doc(state={"desired": {"color": "green"}}, version=5), (409, "Version conflict")),
    ("not UTF-8", Shadow(), b'{"state": {"reported": {"a": "\xff"}}}',
     (415, "Unsupported documented encoding; supported encoding is UTF-8")),
]


@pytest.mark.parametrize("name,stored,payload,expected", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_updates(name, stored, payload, expected):
    outcome = core.update(stored, payload, NOW)
    assert outcome.shadow is None  # nothing stored
    assert len(outcome.messages) == 1
    suffix, msg = outcome.messages[0]
    assert suffix == "rejected"
    assert (msg["code"], msg["message"]) == expected and msg["timestamp"] == NOW


def test_refusal_echoes_the_client_token():
    _, msg = core.update(RED, doc(state={"reported": {}}, version=1, clientToken="abc"), NOW).messages[0]
    assert msg["clientToken"] == "abc" and msg["code"] == 409


def test_growing_past_8_kib_is_refused():
    big = Shadow(reported={"a": "x" * 5000}, meta_reported={"a": {"timestamp": 1}}, version=1, exists=True)
    _, msg = core.update(big, doc(state={"desired": {"b": "y" * 4000}}), NOW).messages[0]
    assert msg["code"] == 413


# (name, stored, request state, expected desired, expected reported, expected /update/delta state or None)
MERGES = [
    ("first desired", Shadow(), {"desired": {"a": 1}}, {"a": 1}, None, {"a": 1}),
    ("reported equal to desired: no delta", Shadow(desired={"a": 1}, version=1, exists=True),
     {"reported": {"a": 1}}, {"a": 1}, {"a": 1}, None),
    ("null removes a key", RED, {"desired": {"color": None}}, {"light": {"on": True, "level": 3}}, {"color": "blue"},
     None),
    ("null removes a section", RED, {"desired": None}, None, {"color": "blue"}, None),
    ("objects merge", RED, {"desired": {"light": {"level": 5}}}, {"color": "red", "light": {"on": True, "level": 5}},
     {"color": "blue"}, {"light": {"level": 5}}),
    ("emptied object is removed", RED, {"desired": {"light": {"on": None, "level": None}}}, {"color": "red"},
     {"color": "blue"}, None),
    ("arrays are replaced", Shadow(desired={"l": [1, 2, 3]}, version=1, exists=True), {"desired": {"l": [9]}},
     {"l": [9]}, None, {"l": [9]}),
    ("delta is what this request touched", RED, {"desired": {"mode": "eco"}},
     {"color": "red", "light": {"on": True, "level": 3}, "mode": "eco"}, {"color": "blue"}, {"mode": "eco"}),
    ("desired equal to reported: no delta", RED, {"desired": {"color": "blue"}},
     {"color": "blue", "light": {"on": True, "level": 3}}, {"color": "blue"}, None),
]


@pytest.mark.parametrize("name,stored,state,desired,reported,delta", MERGES, ids=[m[0] for m in MERGES])
def test_accepted_updates(name, stored, state, desired, reported, delta):
    outcome = core.update(stored, doc(state=state, clientToken="t"), NOW)
    new = outcome.shadow
    assert (new.desired, new.reported, new.version, new.exists) == (desired, reported, stored.version + 1, True)
    by = dict(outcome.messages)
    assert by["accepted"]["state"] == state and by["accepted"]["version"] == new.version
    assert by["accepted"]["clientToken"] == "t" and by["accepted"]["timestamp"] == NOW
    if delta is None:
        assert "delta" not in by
    else:
        assert by["delta"]["state"] == delta and by["delta"]["version"] == new.version
    assert by["documents"]["current"]["version"] == new.version
    if stored.exists:
        assert by["documents"]["previous"]["version"] == stored.version


def test_metadata_stamps_every_leaf_and_keeps_the_others():
    outcome = core.update(RED, doc(state={"desired": {"light": {"level": 7}, "tags": ["a", "b"]}}), NOW)
    meta = outcome.shadow.meta_desired
    assert meta["light"] == {"on": {"timestamp": 1}, "level": {"timestamp": NOW}}
    assert meta["tags"] == [{"timestamp": NOW}, {"timestamp": NOW}]
    assert meta["color"] == {"timestamp": 1}
    accepted = dict(outcome.messages)["accepted"]
    assert accepted["metadata"] == {"desired": {"light": {"level": {"timestamp": NOW}},
                                                "tags": [{"timestamp": NOW}, {"timestamp": NOW}]}}
    delta = dict(outcome.messages)["delta"]
    assert delta["metadata"] == {"light": {"level": {"timestamp": NOW}}, "tags": [{"timestamp": NOW}] * 2}


def test_get_returns_the_full_document_with_delta():
    (suffix, d), = core.get(RED, doc(clientToken="g"), NOW, "t1").messages
    assert suffix == "accepted"
    assert d["state"]["delta"] == {"color": "red", "light": {"on": True, "level": 3}}
    assert d["metadata"]["reported"] == {"color": {"timestamp": 2}}
    assert (d["version"], d["timestamp"], d["clientToken"]) == (4, NOW, "g")


def test_get_and_delete_of_a_missing_shadow_are_404():
    for op in (core.get, core.delete):
        (suffix, d), = op(Shadow(version=7), doc(clientToken="x"), NOW, "cfg").messages
        assert (suffix, d["code"], d["message"], d["clientToken"]) == \
            ("rejected", 404, "No shadow exists with name: 'cfg'", "x")


def test_delete_keeps_the_version_for_the_next_shadow():
    out = core.delete(RED, b"", NOW, "t1")
    assert out.shadow == Shadow(version=4, exists=False)
    assert dict(out.messages)["accepted"] == {"version": 4, "timestamp": NOW}
    again = core.update(out.shadow, doc(state={"reported": {"a": 1}}), NOW)
    assert again.shadow.version == 5 and "previous" not in dict(again.messages)["documents"]


def test_delete_with_a_stale_version_is_409():
    (suffix, d), = core.delete(RED, doc(version=2), NOW, "t1").messages
    assert (suffix, d["code"]) == ("rejected", 409)
