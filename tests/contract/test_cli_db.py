"""The 'datadl db' commands migrate and report the schema; a behind schema is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadl.adapters.sql import SqlDatabase
from datadl.entrypoints.cli import SchemaBehind, ensure_schema_current, main
from datadl.entrypoints.config import Settings


def test_upgrade_then_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'db current' exits 1 on an empty database and 0 once 'db upgrade' has run."""
    args = ["--data-dir", str(tmp_path)]
    assert main([*args, "db", "upgrade"]) == 0
    assert "database upgraded: empty ->" in capsys.readouterr().out
    assert (tmp_path / "datadl.db").exists()
    assert main([*args, "db", "current"]) == 0
    assert "up to date" in capsys.readouterr().out
    fresh = tmp_path / "other"
    fresh.mkdir()
    assert main(["--database-url", f"sqlite:///{fresh / 'x.db'}", "db", "current"]) == 1
    assert "empty: behind" in capsys.readouterr().out


async def test_a_database_behind_head_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    """Starting on an older schema fails with a message naming 'datadl db upgrade'."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = SqlDatabase.from_url(url)
    try:
        await db.upgrade("0001")
    finally:
        await db.dispose()
    with pytest.raises(SchemaBehind, match="datadl db upgrade"):
        await ensure_schema_current(Settings.load(environ={}, database_url=url))
    db = SqlDatabase.from_url(url)
    try:
        await db.upgrade()
    finally:
        await db.dispose()
    await ensure_schema_current(Settings.load(environ={}, database_url=url))


def test_bad_configuration_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed setting is reported on stderr with exit status 2, not a traceback."""
    import os

    os.environ["DATADL_KEEP_VERSIONS"] = "lots"
    try:
        assert main(["db", "current"]) == 2
    finally:
        del os.environ["DATADL_KEEP_VERSIONS"]
    assert "configuration error" in capsys.readouterr().err
