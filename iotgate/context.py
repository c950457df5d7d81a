"""What every command shares: the home directory, the registry URL, the clock and output helpers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from certs.authority import utcnow
from certs.store import PASSPHRASE_ENV, PKIStore, require_home

DEFAULT_HOME = ".iotgate"


@dataclasses.dataclass
class AppContext:
    home: Path
    registry_url: str | None
    clock: Callable[[], dt.datetime] = utcnow
    _registry: Any = None

    @property
    def store(self) -> PKIStore:
        return PKIStore(self.home)

    @property
    def url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home.resolve() / 'registry.db'}"

    def require_home(self) -> None:
        require_home(self.home)

    def registry(self):
        """The registry, opened once per command (the home must exist unless the URL is PostgreSQL)."""
        if self._registry is None:
            from gateway.registry import Registry

            if self.registry_url is None:
                self.require_home()
            self._registry = Registry.open(self.url)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def passphrase(self) -> bytes | None:
        value = os.environ.get(PASSPHRASE_ENV)
        return value.encode() if value else None

    def issuer(self):
        self.require_home()
        return self.store.load_issuer(self.passphrase())


pass_app = click.make_pass_decorator(AppContext)

# Piped output (logs, CI) gets a wide page instead of rich's 80 columns; a terminal keeps its own width.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
console = Console(highlight=False, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False)


def json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, default=json_default,
                                         option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    sys.stdout.flush()


def emit_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(table)


def when(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
