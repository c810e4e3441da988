"""The ``datadl`` command: database migrations and housekeeping jobs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datadl.settings import ConfigError, Settings

if TYPE_CHECKING:
    from datadl.adapters.sql import SqlDatabase


class SchemaBehind(RuntimeError):
    """The database schema is older than this version of datadl expects."""


async def _database(settings: Settings) -> SqlDatabase:
    from datadl.adapters.sql import SqlDatabase

    return SqlDatabase.from_url(settings.effective_database_url, schema=settings.database_schema)


async def ensure_schema_current(settings: Settings) -> None:
    """Refuse to run against a database whose schema is behind; say how to fix it."""
    db = await _database(settings)
    try:
        if not await db.is_current():
            current = await db.current()
            raise SchemaBehind(
                f"the database schema is at {current or 'nothing'} but this datadl needs "
                f"{await db.head()}; run 'datadl db upgrade' first"
            )
    finally:
        await db.dispose()


async def _db_upgrade(settings: Settings) -> int:
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = await _database(settings)
    try:
        before = await db.current()
        await db.upgrade()
        after = await db.current()
    finally:
        await db.dispose()
    print(f"database upgraded: {before or 'empty'} -> {after}")
    return 0


async def _db_current(settings: Settings) -> int:
    db = await _database(settings)
    try:
        current, head = await db.current(), await db.head()
    finally:
        await db.dispose()
    state = "up to date" if current == head else f"behind (head is {head})"
    print(f"{current or 'empty'}: {state}")
    return 0 if current == head else 1


async def _cleanup(settings: Settings) -> int:
    from datadl.container import build_container

    await ensure_schema_current(settings)
    container = build_container(settings)
    try:
        report = await container.app().cleanup.run()
    finally:
        await _close(container)
    print(
        f"removed: {report.datasets} deleted datasets, {report.versions} old versions, "
        f"{report.files} files, {report.tokens} expired tokens, "
        f"{report.audit_records} audit records past retention, "
        f"{report.usage.reservations} stale reservations, {report.usage.counters} old counters"
    )
    return 0


async def _verify(settings: Settings) -> int:
    from datadl.container import build_container

    container = build_container(settings)
    await ensure_schema_current(settings)
    counts: dict[str, int] = {}
    try:
        async for result in container.app().integrity.verify():
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome != "ok":
                print(f"{result.dataset_id} v{result.version}: {result.outcome} {result.detail}")
    finally:
        await _close(container)
    print(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no files")
    return 0 if set(counts) <= {"ok"} else 1


async def _close(container: Any) -> None:
    """Dispose what the container opened (database engines, Redis clients)."""
    app = container.app()
    for adapter in (app.usage, app.cache):
        close = getattr(adapter, "aclose", None)
        if close is not None:
            await close()
    if container.config.database_url() not in (None, "memory://"):
        await container.database().dispose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datadl", description=__doc__)
    parser.add_argument("--config", type=Path, help="a TOML file with a [datadl] table")
    parser.add_argument("--data-dir", type=Path, help="where embedded defaults keep their files")
    parser.add_argument("--database-url", help="sqlite:///file.db or postgresql://user@host/db")
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="database schema migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="migrate the schema to this version's head")
    db_commands.add_parser("current", help="show the schema revision; exit 1 if behind")
    commands.add_parser("cleanup", help="remove expired and deleted things (run on a schedule)")
    commands.add_parser("verify", help="re-hash every stored file; exit 1 on any mismatch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(
            file=args.config, data_dir=args.data_dir, database_url=args.database_url
        )
    except ConfigError as exc:
        print(f"datadl: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "db":
        runner = _db_upgrade if args.db_command == "upgrade" else _db_current
        return asyncio.run(runner(settings))
    try:
        return asyncio.run(_cleanup(settings) if args.command == "cleanup" else _verify(settings))
    except SchemaBehind as exc:
        print(f"datadl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
