"""Alembic environment of datadl: migrate on a handed-over connection, or open one async."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from datadl.adapters.sql.tables import metadata

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters most things by copying the table; batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _migrate_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_from_url() -> None:
    # Reached only from tooling (autogenerate, the alembic command line); datadl itself
    # hands over a connection inside its own transaction through SqlDatabase.upgrade.
    from datadl.adapters.sql.database import SqlDatabase

    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no connection and no sqlalchemy.url to migrate")
    db = SqlDatabase.from_url(url, schema=config.attributes.get("schema"))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_migrate)
    finally:
        await db.dispose()


if context.is_offline_mode():
    _migrate_offline()
elif config.attributes.get("connection") is not None:
    _migrate(config.attributes["connection"])
else:
    asyncio.run(_migrate_from_url())
