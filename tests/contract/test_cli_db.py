"""The 'datadl db' commands migrate and report the schema; a behind schema is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadl.adapters.sql import SqlDatabase
from datadl.entrypoints.cli import SchemaBehind, ensure_schema_current, main
from datadl.settings import Settings


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


async def _publish_one(data_dir: Path) -> str:
    """Publish a sample through a container on the embedded defaults; its storage key."""
    from datadl.container import build_container
    from datadl.samples import path as sample_path
    from datadl.services.datasets import DatasetFacts
    from tests.conftest import chunks

    settings = Settings.load(environ={}, data_dir=data_dir)
    container = build_container(settings)
    try:
        app = container.app()
        await app.accounts.create_organization("acme")
        await app.accounts.create_user("olivia")
        await app.accounts.add_member("acme", "olivia", "admin")
        owner = await app.accounts.principal_for("olivia")
        data = sample_path("penguins.csv").read_bytes()
        dataset = await app.datasets.publish(
            owner, DatasetFacts(organization="acme", filename="penguins.csv"), chunks(data)
        )
        return dataset.file.storage_key
    finally:
        await container.database().dispose()


def test_verify_and_cleanup_on_the_embedded_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'datadl verify' passes intact files, fails a tampered one; 'datadl cleanup' runs."""
    import asyncio

    args = ["--data-dir", str(tmp_path)]
    assert main([*args, "db", "upgrade"]) == 0
    key = asyncio.run(_publish_one(tmp_path))
    capsys.readouterr()
    assert main([*args, "verify"]) == 0
    assert "1 ok" in capsys.readouterr().out
    stored = tmp_path / "files" / key
    stored.write_bytes(stored.read_bytes().replace(b"Adelie", b"Adelia", 1))
    assert main([*args, "verify"]) == 1
    assert "corrupted" in capsys.readouterr().out
    assert main([*args, "cleanup"]) == 0
    assert "removed:" in capsys.readouterr().out


def test_jobs_refuse_a_database_that_is_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'datadl cleanup' on an unmigrated database says to run 'datadl db upgrade'."""
    assert main(["--data-dir", str(tmp_path), "cleanup"]) == 2
    assert "datadl db upgrade" in capsys.readouterr().err


def test_a_new_data_folder_is_private_to_its_owner(tmp_path: Path) -> None:
    """The folder that holds key hashes and files is created with mode 0700."""
    data = tmp_path / "fresh" / "data"
    assert main(["--data-dir", str(data), "db", "upgrade"]) == 0
    assert (data / "datadl.db").exists()
    assert data.stat().st_mode & 0o777 == 0o700
