"""`iotgate fleet`: provision many devices at once."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from certs.keys import KeyType
from iotgate.context import AppContext, console, emit_json, pass_app
from iotgate.provisioning import default_workers, ensure_policy, provision_fleet, thing_names


@click.group()
def fleet() -> None:
    """Fleet operations: bulk provisioning."""


@fleet.command("provision")
@click.option("--count", type=click.IntRange(min=1, max=1_000_000), required=True, help="Number of devices.")
@click.option("--prefix", default="device-", show_default=True, help="Thing names are PREFIX00001, ...")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True, help="First device number.")
@click.option("--policy", "policy", metavar="NAME|FILE",
              help="Policy to attach: a registered name or a JSON file (registered under its file name). "
                   "Default: the built-in least-privilege policy 'iotgate-device'.")
@click.option("--key-type", type=click.Choice([KeyType.EC_P256.value, KeyType.EC_P384.value,
                                               KeyType.RSA_2048.value, KeyType.RSA_3072.value]),
              default=KeyType.EC_P256.value, show_default=True, help="Device key type (made on the device side).")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True, help="Certificate validity.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def provision(app: AppContext, count: int, prefix: str, start: int, policy: str | None, key_type: str, days: int,
              workers: int | None, as_json: bool) -> None:
    """Make a key + CSR per device, sign it, write devices/<thing>/ and register thing, certificate and policy.

    Re-running is safe: things already registered are skipped and a half-finished run is completed.
    """
    app.require_home()
    store = app.store
    issuer = app.issuer()
    registry = app.registry()
    policy_name = ensure_policy(registry, policy)
    names = thing_names(prefix, count, start)
    workers = workers or default_workers()
    with Progress(TextColumn("provisioning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("devices", total=len(names))
        report = provision_fleet(store, registry, issuer, names, policies=[policy_name], key_type=key_type,
                                 workers=workers, now=app.clock(), days=days,
                                 on_progress=lambda n: progress.advance(task, n))
    rate = report.issued / report.seconds if report.seconds and report.issued else 0.0
    if as_json:
        emit_json({"requested": report.requested, "issued": report.issued, "skipped": report.skipped,
                   "seconds": round(report.seconds, 3), "perSecond": round(rate, 1), "policies": report.policies,
                   "devicesDir": str(store.paths.devices), "workers": workers})
        return
    console.print(f"{report.issued} device(s) issued, {report.skipped} already present, "
                  f"in {report.seconds:.1f} s ({rate:,.0f}/s, {workers} worker(s)); policy {policy_name}")
    console.print(f"identities in {store.paths.devices}/<thing>/ (device.pem, device.key 0600, root-ca.pem)")
