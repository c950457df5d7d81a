"""Run the `iotgate` CLI as a user would, in-process (fast) with the real entry point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from iotgate.cli import main


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclasses.dataclass
class CLI:
    home: Path
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *args: str, expect: int | None = 0) -> Result:
        self.capsys.readouterr()
        self.monkeypatch.setenv("COLUMNS", "200")
        try:
            # global options (--registry URL) may come first, as a user would type them
            main(["--home", str(self.home), *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self.capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        if expect is not None:
            assert code == expect, f"iotgate {' '.join(args)} -> {code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
        return result


@pytest.fixture
def cli(tmp_path: Path, capsys, monkeypatch) -> CLI:
    monkeypatch.delenv("IOTGATE_REGISTRY", raising=False)
    monkeypatch.delenv("IOTGATE_CA_PASSPHRASE", raising=False)
    return CLI(tmp_path / "home", capsys, monkeypatch)


@pytest.fixture
def pki_cli(cli: CLI) -> CLI:
    cli("pki", "init")
    return cli


def file_tree(path: Path) -> dict[str, bytes]:
    """Every file under path with its content: to prove a refused command changed nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and not p.name.startswith("registry.db")}


@pytest.fixture
def tree():
    return file_tree
