"""One SQLAlchemy async engine per database: connection setup, transactions, migrations, errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from datadl.domain.errors import Conflict, DatadlError, PortError, Unavailable

log = structlog.get_logger()
MIGRATIONS = Path(__file__).parent / "migrations"

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# SQLSTATE classes that mean "the server or the network could not do it now": connection
# exceptions, rolled-back transactions (deadlock, serialisation), resources, operator
# intervention (cancelled statements, shutdown), system errors. Bad credentials and a
# missing database are included: retrying will not help, but the hint says what to check.
_UNAVAILABLE_SQLSTATES = ("08", "40", "53", "57", "58", "28", "3D", "55P03")
_DRIVER_MODULES = ("asyncpg", "aiosqlite", "sqlite3")
_UNAVAILABLE_HINT = (
    "The database could not be reached or did not answer in time; retry in a few seconds. "
    "If it persists, check that the server is up and that the database URL is right."
)


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _unavailable(exc: BaseException) -> Unavailable:
    # The driver's words (hosts, SQL) stay in the log and the exception chain; the
    # message may reach a client.
    log.warning("sql_unavailable", error=_describe(exc))
    return Unavailable("The database is unavailable.", hint=_UNAVAILABLE_HINT, retry_after=5)


def _is_driver_error(exc: BaseException) -> bool:
    return any(cls.__module__.split(".", 1)[0] in _DRIVER_MODULES for cls in type(exc).__mro__[:-1])


def _classify(exc: BaseException, conflict: str | None) -> DatadlError:
    state = _sqlstate(exc)
    if isinstance(exc, sa_exc.IntegrityError) or (state is not None and state.startswith("23")):
        return Conflict(conflict or "The change clashes with what is stored.")
    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError
        | TimeoutError
        | OSError,
    ):
        return _unavailable(exc)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return _unavailable(exc)
    if state is not None and state.startswith(_UNAVAILABLE_SQLSTATES):
        return _unavailable(exc)
    log.error("sql_error", error=_describe(exc))
    return PortError(
        "The database refused the operation.",
        hint="This is a bug or a schema mismatch; run 'datadl db current' and report it.",
    )


@contextmanager
def translate_errors(*, conflict: str | None = None) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors raised inside the block into port errors.

    Integrity violations become ``Conflict`` (with ``conflict`` as its message); lost or
    refused connections, timeouts and transient server states become ``Unavailable`` with
    a hint; any other database error becomes a ``PortError``. Errors that are not the
    database's (datadl's own, ``ValueError``, cancellation) pass through untouched.
    """
    try:
        yield
    except DatadlError:
        raise
    except (sa_exc.SQLAlchemyError, TimeoutError, OSError) as exc:
        raise _classify(exc, conflict) from exc
    except Exception as exc:
        if _is_driver_error(exc):
            raise _classify(exc, conflict) from exc
        raise


def normalize_url(url: str | URL) -> URL:
    """The URL with its async driver: ``sqlite+aiosqlite`` or ``postgresql+asyncpg``.

    Raises ``ValueError`` for another database, and for an in-memory SQLite database,
    which each pooled connection would see as a different, empty database.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise ValueError(
                "an in-memory SQLite database is not supported; give a file "
                "(sqlite:///path/datadl.db) or use the memory adapters"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"not a SQLite or PostgreSQL URL: {parsed.render_as_string()!r}")


def _sqlite_engine(
    url: URL, *, pool_size: int, connect_timeout: float, statement_timeout: float
) -> AsyncEngine:
    busy_ms = int(statement_timeout * 1000)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=max(connect_timeout, statement_timeout),
        connect_args={"timeout": statement_timeout},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # The driver would open transactions on its own (and never for SELECT); it is
        # switched off so that the "begin" hook below decides how each one starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in (
                f"PRAGMA busy_timeout = {busy_ms}",
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
            ):
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        # A write takes the database's write lock when it begins, not at its first
        # write: two check-then-change transactions can then never interleave, and a
        # busy database makes the second wait (busy_timeout) instead of failing midway.
        # Reads begin deferred and see one snapshot of the WAL.
        if connection.get_execution_options().get("datadl_read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(
    url: URL,
    *,
    schema: str | None,
    pool_size: int,
    connect_timeout: float,
    statement_timeout: float,
) -> AsyncEngine:
    settings = {
        "statement_timeout": str(int(statement_timeout * 1000)),
        # A worker that dies inside a transaction must not hold its row locks for long.
        "idle_in_transaction_session_timeout": str(int(max(60.0, statement_timeout * 6) * 1000)),
        "timezone": "UTC",
        "application_name": "datadl",
    }
    if schema is not None:
        settings["search_path"] = f'"{schema}"'
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=connect_timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "timeout": connect_timeout,
            # The server cancels a slow statement itself; this client-side bound covers a
            # server or network that stopped answering altogether.
            "command_timeout": statement_timeout + connect_timeout,
            "server_settings": settings,
        },
    )


class SqlDatabase:
    """One database (SQLite file or PostgreSQL), its connection pool and its migrations.

    Build it with ``from_url``; share one instance between the SQL adapters of a process
    and ``dispose`` it at shutdown. On PostgreSQL ``schema`` puts every table (Alembic's
    included) in that schema through the connections' ``search_path``. Writes run in
    transactions that, on SQLite, take the write lock when they begin (``BEGIN
    IMMEDIATE``). On PostgreSQL every statement is bounded by ``statement_timeout``
    seconds and every connection attempt by ``connect_timeout``, so a dead or slow
    server gives ``Unavailable``, never a hang; on SQLite ``statement_timeout`` bounds
    the wait for the write lock.
    """

    def __init__(
        self, engine: AsyncEngine, *, schema: str | None = None, lock_timeout: float = 10.0
    ) -> None:
        self._engine = engine
        self._schema = schema
        self._lock_timeout = lock_timeout
        # SQLite admits one writer at a time. Writers of this process queue here, in
        # order and without polling; SQLite's busy timeout arbitrates between processes.
        self._writers = asyncio.Lock() if self.dialect == "sqlite" else None
        self._reader = engine.execution_options(
            datadl_read_only=True,
            **({"postgresql_readonly": True} if self.dialect == "postgresql" else {}),
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> SqlDatabase:
        """A database at ``url``: ``sqlite:///path``, ``postgresql://user@host/db``.

        Driver suffixes (``+aiosqlite``, ``+asyncpg``, ``+psycopg``) are accepted and
        replaced by the async driver. No connection is opened until first use.
        ``schema`` is refused on SQLite and must be a plain SQL identifier.
        """
        parsed = normalize_url(url)
        if parsed.get_backend_name() == "sqlite":
            if schema is not None:
                raise ValueError("a schema is a PostgreSQL setting; SQLite has none")
            engine = _sqlite_engine(
                parsed,
                pool_size=pool_size,
                connect_timeout=connect_timeout,
                statement_timeout=statement_timeout,
            )
            return cls(engine, lock_timeout=statement_timeout)
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"not a plain SQL identifier: {schema!r}")
        engine = _postgres_engine(
            parsed,
            schema=schema,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
        )
        return cls(engine, schema=schema)

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for tests and tools; adapters use ``read``/``write``."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema the tables live in, or None for the default."""
        return self._schema

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT of this dialect, which offers ``on_conflict_do_*``."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    @asynccontextmanager
    async def write(self, *, conflict: str | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, committed when the block ends.

        Any error rolls everything back; database errors leave as port errors, an
        integrity violation as ``Conflict(conflict)``.
        """
        async with self._write_turn():
            with translate_errors(conflict=conflict):
                async with self._engine.begin() as connection:
                    yield connection

    @asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        if self._writers is None:
            yield
            return
        try:
            async with asyncio.timeout(self._lock_timeout):
                await self._writers.acquire()
        except TimeoutError:
            raise Unavailable(
                "The database is busy: other writes of this process held it too long.",
                hint=_UNAVAILABLE_HINT,
                retry_after=5,
            ) from None
        try:
            yield
        finally:
            self._writers.release()

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection in a read-only transaction, which ends when the block does.

        With ``snapshot`` every statement sees the same state (REPEATABLE READ on
        PostgreSQL; a SQLite read transaction always does).
        """
        with translate_errors():
            async with self._reader.connect() as connection:
                if snapshot and self.dialect == "postgresql":
                    await connection.execution_options(isolation_level="REPEATABLE READ")
                async with connection.begin():
                    yield connection

    async def ping(self) -> None:
        """Check that the database answers; ``Unavailable`` if it does not."""
        async with self.read() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection; the object must not be used afterwards."""
        await self._engine.dispose()

    # migrations

    def alembic_config(self, connection: Connection | None = None) -> Config:
        """The Alembic configuration of datadl's migrations, bound to ``connection``.

        Without a connection, Alembic's env.py opens one to this database itself (for
        ``command.revision(..., autogenerate=True)`` and other tooling).
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option(
            "sqlalchemy.url",
            self._engine.url.render_as_string(hide_password=False).replace("%", "%%"),
        )
        config.attributes["connection"] = connection
        config.attributes["schema"] = self._schema
        return config

    async def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` (the newest by default), creating the
        PostgreSQL schema if missing. Concurrent upgrades on PostgreSQL run one at a time.
        """

        def run(connection: Connection) -> None:
            command.upgrade(self.alembic_config(connection), revision)

        async with self.write() as connection:
            if self.dialect == "postgresql":
                # Migrations may rewrite large tables; they must not hit the request timeout.
                await connection.execute(text("SET LOCAL statement_timeout = 0"))
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                    {"name": f"datadl-migrations:{self._schema or ''}"},
                )
                if self._schema is not None:
                    await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"'))
            await connection.run_sync(run)

    async def current(self) -> str | None:
        """The schema revision the database is at, or None if it was never migrated."""

        def read(connection: Connection) -> str | None:
            return MigrationContext.configure(connection).get_current_revision()

        async with self.read() as connection:
            return await connection.run_sync(read)

    async def head(self) -> str:
        """The newest revision this version of datadl ships."""
        head = ScriptDirectory.from_config(self.alembic_config()).get_current_head()
        if head is None:
            raise RuntimeError("datadl ships no migrations")
        return head

    async def is_current(self) -> bool:
        """Whether the database is at the newest revision; False if behind or empty."""
        return await self.current() == await self.head()
