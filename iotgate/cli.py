"""The `iotgate` command: gathers the command groups and turns every error into one line and an exit code."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click
from rich.markup import escape

from certs.errors import IotgateError
from gateway.cli import broker, gateway
from iotgate.commands import (authorizer, aws, ca, cert, fleet, flows, identity, job, loadtest, pki, policy, shadow,
                              stack, template, thing, thing_group)
from iotgate.commands.qualify import qualify
from iotgate.context import DEFAULT_HOME, AppContext, err_console


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="IOTGATE_HOME",
              default=DEFAULT_HOME, show_default=True, show_envvar=True,
              help="Where the PKI, device identities and the SQLite registry live.")
@click.option("--registry", "registry_url", envvar="IOTGATE_REGISTRY", show_envvar=True, metavar="URL",
              help="Registry URL: sqlite:///path.db (default: registry.db in the home) or postgresql://...")
@click.version_option(package_name="iotgate")
@click.pass_context
def cli(ctx: click.Context, home: Path, registry_url: str | None) -> None:
    """Per-device X.509 identities, AWS IoT policies and an mTLS gateway that enforces them."""
    app = AppContext(home=home, registry_url=registry_url)
    ctx.obj = app
    ctx.call_on_close(app.close)


for group in (pki.pki, cert.cert, ca.ca, thing.thing, thing_group.thing_group, policy.policy, template.template,
              authorizer.authorizer, identity.identity, fleet.fleet, flows.flows, loadtest.loadtest, stack.stack,
              shadow.shadow, job.job, aws.aws, gateway, broker, qualify):
    cli.add_command(group)


# `--home` and `--registry` belong to `iotgate`, but users write them after the command too
# (`iotgate thing list --home X`): every command accepts them there and they win over the ones before.
def _late(field: str):
    def store(ctx: click.Context, _param: click.Parameter, value) -> None:
        if value is not None:
            setattr(ctx.find_object(AppContext), field, value)
    return store


def _accept_global_options(command: click.Command) -> None:
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_global_options(sub)
        return
    command.params.append(click.Option(["--home"], type=click.Path(file_okay=False, path_type=Path),
                                       expose_value=False, is_eager=True, callback=_late("home"),
                                       help="Same as `iotgate --home DIR` (allowed here too)."))
    command.params.append(click.Option(["--registry"], metavar="URL", expose_value=False, is_eager=True,
                                       callback=_late("registry_url"),
                                       help="Same as `iotgate --registry URL` (allowed here too)."))


for group in cli.commands.values():
    _accept_global_options(group)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="iotgate", standalone_mode=False)
    except IotgateError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        for note in getattr(exc, "__notes__", ()):
            err_console.print(f"  {escape(note)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (OSError, sqlite3.Error) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
