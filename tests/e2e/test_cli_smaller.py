"""What a new user met with the CLI: options after the command, `policy test` validating its request, SLO gates
with units, Ctrl-C during `fleet provision` and names that cannot be folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from certs.authority import certificate_id
from gateway.registry import Registry

IOTGATE = str(Path(sys.executable).with_name("iotgate"))


def test_home_and_registry_are_accepted_after_the_command(pki_cli):
    pki_cli("fleet", "provision", "--count", "2")
    home = str(pki_cli.home)
    # the fixture puts --home first; here it comes after the command (and wins over the one before)
    r = pki_cli("thing", "list", "--json", "--home", home)
    assert [t["thingName"] for t in r.json()] == ["device-00001", "device-00002"]
    r = pki_cli("thing", "list", "--home", home + "-elsewhere", expect=2)
    assert "no iotgate home" in r.err
    r = pki_cli("thing", "list", "--json", "--registry", f"sqlite:///{pki_cli.home / 'registry.db'}")
    assert len(r.json()) == 2


@pytest.mark.parametrize("action, resource, message", [
    ("iot:Publsh", "topic/dt/device-00001/t", 'unknown action "iot:Publsh"; did you mean "iot:Publish"?'),
    ("Publish", "topic/dt/device-00001/t", 'did you mean "iot:Publish"?'),
    ("iot:Publish", "dt/device-00001/t", 'did you mean "topic/dt/device-00001/t"?'),
    ("iot:Subscribe", "topic/cmd/device-00001/#", 'did you mean "topicfilter/cmd/device-00001/#"?'),
    ("iot:Connect", "cleint/device-00001", 'did you mean "client/device-00001"?'),
])
def test_policy_test_refuses_an_unknown_action_or_resource_type_instead_of_denying(pki_cli, action, resource,
                                                                                  message):
    pki_cli("fleet", "provision", "--count", "1")
    r = pki_cli("policy", "test", "--thing", "device-00001", "--action", action, "--resource", resource, expect=2)
    assert message in r.err and "DENY" not in r.out
    ok = pki_cli("policy", "test", "--thing", "device-00001", "--action", "iot:publish", "--resource",
                 "topic/dt/device-00001/t")
    assert "ALLOW iot:Publish" in ok.out


def test_slo_gates_without_a_unit_are_refused(pki_cli):
    r = pki_cli("fleet", "run", "--target", "gateway", "--endpoint", "127.0.0.1:1", "--slo", "connack_p99<500",
                expect=2)
    assert "connack_p99 is a duration: give its unit" in r.err


def test_a_prefix_with_a_slash_is_refused_before_anything_is_written(pki_cli, tree):
    before = tree(pki_cli.home)
    r = pki_cli("fleet", "provision", "--count", "2", "--prefix", "site/a-", expect=2)
    assert "'site/a-' holds '/'" in r.err
    assert tree(pki_cli.home) == before


def test_ctrl_c_during_fleet_provision_says_how_many_and_the_resume_reconciles(pki_cli):
    home = pki_cli.home
    devices = home / "devices"
    count = 1500
    args = [IOTGATE, "--home", str(home), "fleet", "provision", "--count", str(count), "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 30
    while not (devices.exists() and any(p.name.startswith("device-") for p in devices.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)          # what Ctrl-C in a terminal does: the whole process group
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("provisioning finished before the interrupt landed")
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted: ") and f"of {count:,} device(s) registered" \
        in lines[0] and "run the same command again" in lines[0], err
    # the resume completes it, and every device folder holds a registered certificate
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    registry = Registry.open(f"sqlite:///{home / 'registry.db'}")
    try:
        assert registry.count_things() == count
        folders = sorted(p for p in devices.iterdir() if not p.name.startswith("."))
        assert len(folders) == count
        for folder in folders:
            cert = x509.load_pem_x509_certificate((folder / "device.pem").read_bytes())
            assert registry.get_certificate(certificate_id(cert)).status == "ACTIVE", folder.name
    finally:
        registry.close()
