"""`iotgate stack render`: the stack's configs from deploy/'s templates (compose and native alike)."""

from __future__ import annotations

from pathlib import Path

import click

from iotgate.context import AppContext, err_console, pass_app
from iotgate.stack import PROFILES, StackError, render


@click.group()
def stack() -> None:
    """The dev stack's configuration (docker-compose.yml and native runs share it)."""


@stack.command("render")
@click.option("--deploy", "deploy_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("deploy"),
              show_default=True, help="The templates: iotgate's deploy/ directory.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where the rendered files go (default: the home's stack/).")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="native", show_default=True,
              help="compose: services by their compose names; native: everything on loopback.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one variable (repeatable).")
@pass_app
def render_cmd(app: AppContext, deploy_dir: Path, out: Path | None, profile: str, sets: tuple[str, ...]) -> None:
    """Render gateway.toml, prometheus.yml and Grafana's provisioning from the templates."""
    overrides = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StackError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = value
    out = out or app.home / "stack"
    for path in render(deploy_dir, out, profile, overrides):
        err_console.print(f"wrote {path}")
