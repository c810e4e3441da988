"""The contract suites and agreement machines run on the SQL adapters, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from datadl.adapters.memory import MemoryCatalog, MemoryUsageStore
from datadl.adapters.sql import (
    SqlAuditLog,
    SqlCache,
    SqlCatalog,
    SqlDatabase,
    SqlUsageStore,
    translate_errors,
)
from datadl.adapters.sql.audit import history_statement
from datadl.adapters.sql.database import normalize_url
from datadl.domain.errors import Conflict, NotFound, PortError, Unavailable
from datadl.ports import Audience, AuditLog, Cache, Catalog, DatasetQuery, HistoryQuery, UsageStore
from datadl.testing import (
    AuditLogContract,
    CacheContract,
    CatalogContract,
    UsageStoreContract,
    catalog_agreement,
    usage_store_agreement,
)
from datadl.testing.builders import (
    T0,
    dataset,
    grant,
    organization,
    record,
    token_claims,
    user,
    version_of,
)

POSTGRES_ENV = "DATADL_TEST_POSTGRES_URL"
SKIP_POSTGRES = (
    "set DATADL_TEST_POSTGRES_URL=postgresql://user@host:5432/db to run the PostgreSQL "
    "contract tests"
)
AGREEMENT = settings(max_examples=20, stateful_step_count=20, deadline=None)

_unreachable: dict[str, str] = {}


def postgres_url() -> str:
    """The test server's URL, checked once; skip without one, or fail where CI requires it."""
    url = os.environ.get(POSTGRES_ENV)
    required = os.environ.get("DATADL_REQUIRE_SERVICES") == "1"
    if not url:
        if required:
            pytest.fail(f"DATADL_REQUIRE_SERVICES=1 but {POSTGRES_ENV} is unset: {SKIP_POSTGRES}")
        pytest.skip(SKIP_POSTGRES)
    if url not in _unreachable:
        # A thread of its own, so that this works inside async tests and fixtures too.
        with ThreadPoolExecutor(1) as pool:
            _unreachable[url] = pool.submit(asyncio.run, _probe(url)).result()
    if _unreachable[url]:
        message = f"PostgreSQL at {POSTGRES_ENV} is unreachable: {_unreachable[url]}"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return url


def driver_dsn(url: str) -> str:
    """The URL as asyncpg itself reads it (no SQLAlchemy driver suffix)."""
    return normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _probe(url: str) -> str:
    try:
        connection = await asyncpg.connect(driver_dsn(url), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return ""


async def drop_schema(url: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    connection = await asyncpg.connect(driver_dsn(url), timeout=5)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@attrs.define
class Backend:
    """Opens fresh databases of one kind, migrated to head, and removes them afterwards.

    SQLite gets a new file per database; PostgreSQL a new schema with a random name, so
    that concurrent runs on one server never meet. Measured per test here: about 35 ms
    to migrate a SQLite file, 130 ms to create and migrate a PostgreSQL schema and 35 ms
    to drop it, well under 0.3 s, so no template schema or TRUNCATE between tests is needed.
    """

    kind: str
    root: Path
    url: str | None = None
    _count: itertools.count[int] = attrs.field(factory=itertools.count)

    def fresh(self) -> SqlDatabase:
        """A new, empty database that nothing else uses (not yet migrated)."""
        if self.kind == "sqlite":
            return SqlDatabase.from_url(f"sqlite:///{self.root / f'db{next(self._count)}.sqlite'}")
        assert self.url is not None
        return SqlDatabase.from_url(self.url, schema=f"datadl_test_{secrets.token_hex(6)}")

    async def open(self) -> SqlDatabase:
        """A fresh database migrated to head."""
        db = self.fresh()
        try:
            await db.upgrade()
        except BaseException:
            await self.close(db)
            raise
        return db

    async def close(self, db: SqlDatabase) -> None:
        """Dispose the engine and remove the database's schema."""
        await db.dispose()
        if self.kind == "postgres" and db.schema is not None:
            assert self.url is not None
            await drop_schema(self.url, db.schema)


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """Where this module's databases are made: a SQLite directory or a PostgreSQL server."""
    root = tmp_path_factory.mktemp(f"sql-{request.param}")
    if request.param == "postgres":
        return Backend("postgres", root, postgres_url())
    return Backend("sqlite", root)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """The PostgreSQL server alone, for tests of what only a server does."""
    return Backend("postgres", tmp_path_factory.mktemp("sql-pg"), postgres_url())


@pytest.fixture
async def database(backend: Backend) -> AsyncIterator[SqlDatabase]:
    """A fresh database at head for one test."""
    db = await backend.open()
    try:
        yield db
    finally:
        await backend.close(db)


class TestSqlCatalog(CatalogContract):
    """SqlCatalog keeps the Catalog contract."""

    @pytest.fixture
    def catalog(self, database: SqlDatabase) -> Catalog:
        return SqlCatalog(database)

    async def test_tokens_go_with_their_dataset(self, database: SqlDatabase) -> None:
        """Purging a dataset drops its issued tokens, and grant ids are unique across datasets."""
        catalog = SqlCatalog(database)
        await catalog.add_organization(organization("o1"))
        await catalog.add_user(user("u1"))
        for dataset_id in ("d1", "d2"):
            ds = dataset(dataset_id, organization_id="o1", owner_id="u1")
            await catalog.add_dataset(ds, version_of(ds))
        await catalog.add_grant(grant("g1", "d1", user_id="u1"))
        with pytest.raises(Conflict):
            await catalog.add_grant(grant("g1", "d2", user_id="u1"))
        await catalog.add_token(token_claims("t1", "d1"))
        await catalog.add_token(token_claims("t2", "d2"))
        await catalog.purge_dataset("d1")
        with pytest.raises(NotFound):
            await catalog.get_token("t1")
        assert (await catalog.get_token("t2")).dataset_id == "d2"

    async def test_search_escapes_wildcards_and_folds_case(self, database: SqlDatabase) -> None:
        """LIKE wildcards in the search text match literally; case folds as str.casefold."""
        catalog = SqlCatalog(database)
        await catalog.add_organization(organization("o1"))
        for ds_id, title in (("d1", "100% Straße"), ("d2", "1000 streets"), ("d3", "a_b")):
            ds = dataset(ds_id, organization_id="o1", owner_id="u1", title=title)
            await catalog.add_dataset(ds, version_of(ds))

        async def ids(needle: str) -> list[str]:
            query = DatasetQuery(audience=Audience(user_id=None), text=needle)
            return sorted(d.id for d in await catalog.list_datasets(query))

        assert await ids("100%") == ["d1"]
        assert await ids("STRASSE") == ["d1"]
        assert await ids("a_b") == ["d3"]
        assert await ids("a%b") == []


class TestSqlAuditLog(AuditLogContract):
    """SqlAuditLog keeps the AuditLog contract."""

    @pytest.fixture
    def audit_log(self, database: SqlDatabase) -> AuditLog:
        return SqlAuditLog(database)


class TestSqlUsageStore(UsageStoreContract):
    """SqlUsageStore keeps the UsageStore contract."""

    @pytest.fixture
    def usage_store(self, database: SqlDatabase) -> UsageStore:
        return SqlUsageStore(database)


class TestSqlCache(CacheContract):
    """SqlCache keeps the Cache contract on real time."""

    @pytest.fixture
    def cache(self, database: SqlDatabase) -> Cache:
        return SqlCache(database)

    async def test_expired_entries_are_purged(self, database: SqlDatabase) -> None:
        """purge_expired removes exactly the entries whose deadline has passed."""
        now = [1000.0]
        cache = SqlCache(database, clock=lambda: now[0])
        await cache.set("old", b"1", ttl_seconds=5)
        await cache.set("edge", b"2", ttl_seconds=10)
        await cache.set("live", b"3", ttl_seconds=11)
        await cache.set("forever", b"4")
        now[0] += 10
        assert await cache.purge_expired() == 2
        assert [await cache.get(k) for k in ("old", "edge", "live", "forever")] == [
            None,
            None,
            b"3",
            b"4",
        ]


# --- agreement with the memory adapters -----------------------------------------------------


class _OwnedUsageStore(SqlUsageStore):
    """A usage store on a database of its own, removed when the machine closes it."""

    def __init__(self, db: SqlDatabase, backend: Backend) -> None:
        super().__init__(db)
        self._owned = (db, backend)

    async def aclose(self) -> None:
        db, backend = self._owned
        await backend.close(db)


class _OwnedCatalog(SqlCatalog):
    """A catalogue on a database of its own, removed when the machine closes it."""

    def __init__(self, db: SqlDatabase, backend: Backend) -> None:
        super().__init__(db)
        self._owned = (db, backend)

    async def aclose(self) -> None:
        db, backend = self._owned
        await backend.close(db)


def test_sql_usage_store_agrees_with_memory(backend: Backend) -> None:
    """The SQL usage store answers random operations exactly as the memory one does."""

    async def candidate() -> UsageStore:
        return _OwnedUsageStore(await backend.open(), backend)

    run_state_machine_as_test(
        usage_store_agreement(MemoryUsageStore, candidate), settings=AGREEMENT
    )


def test_sql_catalog_agrees_with_memory(backend: Backend) -> None:
    """The SQL catalogue answers random operations exactly as the memory one does."""

    async def candidate() -> Catalog:
        return _OwnedCatalog(await backend.open(), backend)

    run_state_machine_as_test(catalog_agreement(MemoryCatalog, candidate), settings=AGREEMENT)


# --- connections, transactions and errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/datadl.db", "sqlite+aiosqlite:///data/datadl.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db?ssl=require", "postgresql+asyncpg://u@h/db?ssl=require"),
    ],
)
def test_urls_are_normalised_to_async_drivers(given: str, expected: str) -> None:
    """Plain and driver-suffixed URLs all select the async driver."""
    assert normalize_url(given).render_as_string() == expected


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("mysql://u@h/db", None),
        ("sqlite:///x.db", "s"),
        ("postgresql://u@h/db", 'bad"name'),
    ],
)
def test_unusable_settings_are_refused(url: str, schema: str | None) -> None:
    """In-memory SQLite, other databases, schemas on SQLite and odd schema names are refused."""
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        SqlDatabase.from_url(url, schema=schema)


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    """Every SQLite connection runs in WAL mode with foreign keys enforced."""
    db = SqlDatabase.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with db.read() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await db.dispose()


async def test_sqlite_writes_take_the_lock_when_they_begin(tmp_path: Path) -> None:
    """A write transaction waits for another's lock at BEGIN, then times out as Unavailable."""
    path = tmp_path / "x.db"
    db = SqlDatabase.from_url(f"sqlite:///{path}", statement_timeout=0.2)
    await db.upgrade()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await SqlCache(db).set("k", b"v")
        assert "locked" in str(caught.value.__cause__)
        assert time.monotonic() - started < 2
        # A reader is not blocked by a writer in WAL mode.
        assert await SqlCache(db).get("k") is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await db.dispose()


async def test_unreachable_server_is_unavailable() -> None:
    """A server that refuses connections gives Unavailable with a hint, quickly."""
    db = SqlDatabase.from_url("postgresql://postgres@127.0.0.1:9/test", connect_timeout=1)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as caught:
            await db.ping()
        assert "retry" in caught.value.hint
        with pytest.raises(Unavailable):
            await SqlCatalog(db).get_dataset("d1")
    finally:
        await db.dispose()
    assert time.monotonic() - started < 5


def test_translate_errors_maps_driver_errors() -> None:
    """Integrity errors become Conflict, lost connections Unavailable, the rest PortError."""
    cases: list[tuple[BaseException, type[Exception]]] = [
        (sa_exc.IntegrityError("INSERT", {}, Exception("dup")), Conflict),
        (sa_exc.OperationalError("SELECT", {}, Exception("gone")), Unavailable),
        (sa_exc.InterfaceError("SELECT", {}, Exception("closed")), Unavailable),
        (sa_exc.TimeoutError("pool"), Unavailable),
        (TimeoutError(), Unavailable),
        (ConnectionRefusedError(), Unavailable),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), Unavailable),
        (asyncpg.exceptions.QueryCanceledError("slow"), Unavailable),
        (asyncpg.exceptions.UniqueViolationError("dup"), Conflict),
        (asyncpg.exceptions.UndefinedTableError("no table"), PortError),
        (sa_exc.ProgrammingError("SELECT", {}, Exception("syntax")), PortError),
        (sqlite3.DatabaseError("malformed"), PortError),
    ]
    for raised, expected in cases:
        with pytest.raises(expected), translate_errors(conflict="taken"):
            raise raised
    with pytest.raises(ValueError, match="mine"), translate_errors():
        raise ValueError("mine")
    with pytest.raises(NotFound), translate_errors():
        raise NotFound("mine")


@pytest.mark.postgres
async def test_statement_timeout_is_unavailable(postgres: Backend) -> None:
    """A statement slower than statement_timeout is cancelled by the server: Unavailable."""
    assert postgres.url is not None
    db = SqlDatabase.from_url(postgres.url, statement_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            async with db.read() as conn:
                await conn.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 2
        await db.ping()
    finally:
        await db.dispose()


async def _write_then_lose_the_connection(db: SqlDatabase, dsn: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, name, display_name, created_at) "
                "VALUES ('u1', 'u1', 'U1', now())"
            )
        )
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        killer = await asyncpg.connect(dsn)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        await conn.execute(text("SELECT 1"))


@pytest.mark.postgres
async def test_a_killed_connection_leaves_no_partial_write(postgres: Backend) -> None:
    """A transaction whose connection dies midway gives Unavailable and keeps nothing."""
    db = await postgres.open()
    try:
        catalog = SqlCatalog(db)
        await catalog.add_organization(organization("o1"))
        with pytest.raises(Unavailable):
            await _write_then_lose_the_connection(db, driver_dsn(str(postgres.url)))
        with pytest.raises(NotFound):
            await catalog.get_user("u1")
        assert [o.id for o in await catalog.list_organizations()] == ["o1"]
    finally:
        await postgres.close(db)


# --- index use on PostgreSQL ----------------------------------------------------------------


MIDWAY = datetime(2024, 1, 8, tzinfo=UTC)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", ()):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.postgres
async def test_history_pages_use_the_history_index(postgres: Backend) -> None:
    """On 20k records the history query, first page and keyset page, is an index scan."""
    db = await postgres.open()
    try:
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO download_records (id, dataset_id, organization_id, version,"
                    " format, status, channel, started_at, downloader, principal_id,"
                    " bytes_sent, finished_at, logical)"
                    " SELECT 'r' || i, 'd' || (i % 20), 'o1', 1, 'csv', 'completed', 'api',"
                    " timestamptz '2024-01-01' + i * interval '1 minute', 'user:u' || (i % 97),"
                    " 'u' || (i % 97), 1000, timestamptz '2024-01-01' + i * interval '1 minute',"
                    " true FROM generate_series(1, 20000) AS i"
                )
            )
        async with db.engine.connect() as conn:
            await conn.execute(text("ANALYZE download_records"))
            await conn.commit()
            for query in (
                HistoryQuery(dataset_id="d7", limit=50),
                HistoryQuery(dataset_id="d7", limit=50, before=(MIDWAY, "r9007")),
                HistoryQuery(principal_id="u5", limit=50),
            ):
                statement = history_statement(query)
                compiled = statement.compile(
                    dialect=conn.dialect, compile_kwargs={"literal_binds": True}
                )
                result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}")
                document = result.scalar_one()
                plan = (json.loads(document) if isinstance(document, str) else document)[0]
                nodes = _plan_nodes(plan["Plan"])
                index = (
                    "ix_download_records_dataset_history"
                    if query.dataset_id
                    else "ix_download_records_principal_history"
                )
                # No enable_seqscan=off needed: with 20k rows in 20 datasets the planner
                # prefers the index on its own, and a Limit over an ordered index scan.
                assert any(
                    n["Node Type"] == "Index Scan" and n["Index Name"] == index for n in nodes
                ), json.dumps(plan, indent=1)
                assert not any(n["Node Type"] == "Seq Scan" for n in nodes)
                assert not any(n["Node Type"] == "Sort" for n in nodes)
    finally:
        await postgres.close(db)


async def test_records_read_back_in_utc(database: SqlDatabase) -> None:
    """A record written with a non-UTC offset reads back as the same instant in UTC."""
    audit = SqlAuditLog(database)
    paris = timezone(timedelta(hours=2))
    rec = record("r1", started_at=T0.astimezone(paris))
    await audit.append(rec)
    back = await audit.get("r1")
    assert back == rec
    assert back.started_at.utcoffset() == timedelta(0)
