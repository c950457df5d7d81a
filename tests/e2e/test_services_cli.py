"""`iotgate shadow` and `iotgate job` as a user runs them: output, refusals with AWS's codes, exit codes."""

from __future__ import annotations

import orjson


def test_shadow_commands(pki_cli, tmp_path):
    cli = pki_cli
    cli("thing", "create", "lamp-1")
    got = cli("shadow", "get", "lamp-1", expect=1)
    assert "404 No shadow exists with name: 'lamp-1'" in got.err
    updated = cli("shadow", "update", "lamp-1", "--payload", '{"state": {"desired": {"on": true}}, "clientToken": "c"}')
    assert updated.json()["version"] == 1 and updated.json()["clientToken"] == "c"
    assert cli("shadow", "get", "lamp-1").json()["state"]["delta"] == {"on": True}
    conflict = cli("shadow", "update", "lamp-1", "--payload", '{"state": {"reported": {}}, "version": 7}', expect=1)
    assert "409 Version conflict" in conflict.err
    bad = cli("shadow", "update", "lamp-1", "--payload", "{not json", expect=1)
    assert "400 Invalid JSON" in bad.err
    path = tmp_path / "named.json"
    path.write_text('{"state": {"reported": {"fw": "1.0"}}}')
    assert cli("shadow", "update", "lamp-1", "--name", "fw", "--payload", f"@{path}").json()["version"] == 1
    assert cli("shadow", "update", "lamp-1", "--payload", f"@{tmp_path / 'missing.json'}", expect=2).err
    assert cli("shadow", "list", "lamp-1").json() == [{"name": None, "version": 1}, {"name": "fw", "version": 1}]
    assert cli("shadow", "delete", "lamp-1", "--name", "fw", "--version", "1").json()["version"] == 1
    assert "bad name" in cli("shadow", "get", "lamp-1", "--name", "bad name", expect=2).err


def test_job_commands(pki_cli, tmp_path):
    cli = pki_cli
    for name in ("pump-1", "pump-2"):
        cli("thing", "create", name)
    doc = tmp_path / "job.json"
    doc.write_text('{"operation": "calibrate"}')
    created = cli("job", "create", "cal-1", "--document", str(doc), "--targets", "pump-1,pump-2", "--json")
    assert created.json()["jobExecutionsCounts"] == {"QUEUED": 2}
    assert "already exists" in cli("job", "create", "cal-1", "--document", str(doc), "--targets", "pump-1",
                                   expect=2).err
    assert "nobody" in cli("job", "create", "cal-2", "--document", str(doc), "--targets", "nobody", expect=2).err
    doc.write_text("[1, 2]")
    assert "JSON object" in cli("job", "create", "cal-3", "--document", str(doc), "--targets", "pump-1",
                                expect=2).err
    assert [j["jobId"] for j in cli("job", "list", "--json").json()] == ["cal-1"]
    shown = cli("job", "show", "cal-1", "--json").json()
    assert [e["status"] for e in shown["executions"]] == ["QUEUED", "QUEUED"]
    assert cli("job", "cancel", "cal-1", "--json").json()["status"] == "CANCELED"
    assert "does not exist" in cli("job", "show", "nope", expect=2).err
    assert orjson.loads(cli("job", "list", "--status", "CANCELED", "--json").out)[0]["jobId"] == "cal-1"


def test_job_for_a_thing_group(pki_cli, tmp_path):
    cli = pki_cli
    for name in ("valve-1", "valve-2", "valve-3"):
        cli("thing", "create", name)
    cli("thing-group", "create", "valves", "--description", "all valves")
    assert "nosuch" in cli("thing-group", "add", "valves", "nosuch", expect=2).err
    cli("thing-group", "add", "valves", "valve-1", "valve-2")
    assert cli("thing-group", "show", "valves", "--json").json()["things"] == ["valve-1", "valve-2"]
    doc = tmp_path / "job.json"
    doc.write_text('{"operation": "close"}')
    assert "name the job's targets" in cli("job", "create", "close-0", "--document", str(doc), expect=2).err
    assert "does not exist" in cli("job", "create", "close-0", "--document", str(doc), "--thing-group", "pipes",
                                   expect=2).err
    created = cli("job", "create", "close-1", "--document", str(doc), "--thing-group", "valves",
                  "--targets", "valve-3,valve-1", "--json").json()
    assert sorted(e["thingName"] for e in created["executions"]) == ["valve-1", "valve-2", "valve-3"]
    cli("thing-group", "remove", "valves", "valve-2")
    assert cli("thing-group", "list", "--json").json() == [
        {"thingGroupName": "valves", "description": "all valves", "things": 1}]
    cli("thing-group", "delete", "valves")
    assert cli("thing-group", "list", "--json").json() == []
