"""`iotgate job`: AWS IoT Jobs from the operator's side: create, list, show, cancel.

Targets get a QUEUED execution each; devices run them through ``$aws/things/<thing>/jobs/...``. The
``notify`` / ``notify-next`` messages a change makes wait in the registry's outbox until a running gateway
publishes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from gateway.services.groups import ThingGroups
from gateway.services.jobs_service import JobsService
from gateway.services.store import ServiceStore
from iotgate.context import AppContext, console, emit_json, emit_table, json_option, pass_app


def _service(app: AppContext) -> JobsService:
    return JobsService(ServiceStore.of(app.registry()))


@click.group()
def job() -> None:
    """Jobs: create, list, show, cancel."""


@job.command("create")
@click.argument("job_id")
@click.option("--document", "document", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The job document (a JSON object, at most 32 KB).")
@click.option("--targets", metavar="THING,...", help="Comma-separated thing names.")
@click.option("--thing-group", "groups", multiple=True, metavar="G",
              help="Target the things of this group as they are now (repeatable; see `iotgate thing-group`).")
@click.option("--description", help="A description of the job.")
@click.option("--timeout-minutes", type=click.IntRange(1, 10080),
              help="In-progress timeout: an execution IN_PROGRESS longer than this becomes TIMED_OUT.")
@click.option("--unregistered-ok", is_flag=True, help="Accept targets that are not things in the registry.")
@json_option
@pass_app
def create(app: AppContext, job_id: str, document: Path, targets: str | None, groups: tuple[str, ...],
           description: str | None, timeout_minutes: int | None, unregistered_ok: bool, as_json: bool) -> None:
    """Create a job with one QUEUED execution per target thing (--targets and/or --thing-group)."""
    if not targets and not groups:
        raise click.UsageError("name the job's targets: --targets THING,... and/or --thing-group G")
    try:
        data = document.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"{document}: {exc.strerror}", param_hint="--document") from None
    things = [t.strip() for t in (targets or "").split(",") if t.strip()]
    group_store = ThingGroups(ServiceStore.of(app.registry()))
    for group in groups:
        members = group_store.members(group)
        if not members:
            raise click.BadParameter(f"thing group {group} has no things", param_hint="--thing-group")
        things += members
    if not unregistered_ok:
        missing = sorted(set(things) - app.registry().existing_things(things))
        if missing:
            raise click.BadParameter(f"not things in the registry: {', '.join(missing[:5])}"
                                     f"{' ...' if len(missing) > 5 else ''} (create them, or pass --unregistered-ok)",
                                     param_hint="--targets")
    shown = _service(app).create(job_id, data, things, description=description,
                                 in_progress_timeout_minutes=timeout_minutes, now=time.time())
    if as_json:
        emit_json(shown)
        return
    console.print(f"job {job_id} created: {len(shown['executions'])} execution(s) QUEUED")


@job.command("list")
@click.option("--status", type=click.Choice(["IN_PROGRESS", "CANCELED", "COMPLETED"]), help="Only jobs in this status.")
@json_option
@pass_app
def list_(app: AppContext, status: str | None, as_json: bool) -> None:
    """List jobs."""
    rows = _service(app).list(status)
    if as_json:
        emit_json(rows)
        return
    emit_table(f"{len(rows)} job(s)", ["job", "status", "targets", "created"],
               ((r["jobId"], r["status"], r["targets"], r["createdAt"]) for r in rows))


@job.command("show")
@click.argument("job_id")
@json_option
@pass_app
def show(app: AppContext, job_id: str, as_json: bool) -> None:
    """A job, its document and every execution."""
    shown = _service(app).show(job_id)
    if as_json:
        emit_json(shown)
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(shown["jobExecutionsCounts"].items()))
    console.print(f"job {shown['jobId']}: {shown['status']} ({counts})")
    emit_table(None, ["thing", "status", "version", "status details"],
               ((e["thingName"], e["status"], e["versionNumber"],
                 ",".join(f"{k}={v}" for k, v in (e["statusDetails"] or {}).items())) for e in shown["executions"]))


@job.command("cancel")
@click.argument("job_id")
@click.option("--force", is_flag=True, help="Cancel IN_PROGRESS executions too (else only QUEUED ones).")
@click.option("--comment", help="Why the job is canceled.")
@json_option
@pass_app
def cancel(app: AppContext, job_id: str, force: bool, comment: str | None, as_json: bool) -> None:
    """Cancel a job: its QUEUED executions (and with --force the IN_PROGRESS ones) become CANCELED."""
    shown = _service(app).cancel(job_id, force=force, comment=comment, now=time.time())
    if as_json:
        emit_json(shown)
        return
    console.print(f"job {job_id} canceled")
