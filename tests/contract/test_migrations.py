"""The Alembic migrations on SQLite and PostgreSQL: populated upgrades, revisions, no drift."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from datadl.adapters.sql import SqlAuditLog, SqlCache, SqlCatalog, SqlDatabase, SqlUsageStore
from datadl.adapters.sql.tables import metadata
from datadl.domain.accounting import Channel, DownloadRecord, DownloadStatus
from datadl.domain.model import (
    ApiKey,
    Dataset,
    DatasetFile,
    DatasetStatus,
    DatasetVersion,
    FileFormat,
    Grant,
    Membership,
    Organization,
    Permission,
    Role,
    Scope,
    Visibility,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride
from datadl.domain.quotas import Usage
from datadl.ports import HistoryQuery
from datadl.ports.usage import TokenUse
from tests.contract.test_sql import BACKENDS, Backend, postgres_url

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SHA = "ab" * 32

# The database as revision 0001 left it, written as an operator's tools would: plain SQL.
# Times are UTC literals in a form both databases read; the server session is in UTC.
REVISION_1_ROWS = [
    "INSERT INTO organizations (id, slug, title, created_at) VALUES"
    " ('o1', 'acme', 'Acme Research', '2024-03-01 12:00:00.000000'),"
    " ('o2', 'beta', 'Beta Lab', '2024-03-01 12:00:00.000000')",
    "INSERT INTO users (id, name, display_name, email, created_at) VALUES"
    " ('u1', 'olivia', 'Olivia', 'olivia@example.org', '2024-03-01 12:00:00.000000'),"
    " ('u2', 'mark', 'Mark', NULL, '2024-03-01 12:00:00.000000')",
    "INSERT INTO memberships (organization_id, user_id, role) VALUES"
    " ('o1', 'u1', 'admin'), ('o1', 'u2', 'member'), ('o2', 'u2', 'member')",
    "INSERT INTO api_keys (id, user_id, name, scopes, secret_hash, created_at, revoked_at)"
    " VALUES ('k1', 'u1', 'ci', '[\"download\", \"read\"]', :sha,"
    " '2024-03-01 12:00:00.000000', NULL)",
    "INSERT INTO datasets (id, slug, title, description, title_folded, description_folded,"
    " organization_id, owner_id, visibility, tags, license, version, storage_key, format,"
    " size_bytes, sha256, media_type, filename, status, created_at, updated_at, row_count,"
    " column_count, deleted_at) VALUES"
    " ('d1', 'rainfall', 'Rainfall', 'Daily rain', 'rainfall', 'daily rain', 'o1', 'u1',"
    " 'public', '[\"weather\", \"rain\"]', 'CC-BY-4.0', 2, 'blobs/v2', 'csv', 2048, :sha,"
    " 'text/csv', 'rain.csv', 'ready', '2024-03-01 12:00:00.000000',"
    " '2024-03-02 08:30:00.250000', 365, 4, NULL),"
    " ('d2', 'old', 'Old', '', 'old', '', 'o1', 'u2', 'private', '[]', NULL, 1, 'blobs/old',"
    " 'parquet', 10, :sha, 'application/vnd.apache.parquet', 'old.parquet', 'ready',"
    " '2024-03-01 12:00:01.000000', '2024-03-01 12:00:01.000000', NULL, NULL,"
    " '2024-03-03 00:00:00.000000')",
    "INSERT INTO dataset_tags (dataset_id, position, tag, tag_folded) VALUES"
    " ('d1', 0, 'weather', 'weather'), ('d1', 1, 'rain', 'rain')",
    "INSERT INTO dataset_versions (dataset_id, number, storage_key, format, size_bytes, sha256,"
    " media_type, filename, created_at, created_by, removed_at) VALUES"
    " ('d1', 1, 'blobs/v1', 'csv', 1024, :sha, 'text/csv', 'rain.csv',"
    " '2024-03-01 12:00:00.000000', 'u1', '2024-03-02 08:30:00.250000'),"
    " ('d1', 2, 'blobs/v2', 'csv', 2048, :sha, 'text/csv', 'rain.csv',"
    " '2024-03-02 08:30:00.250000', 'u1', NULL),"
    " ('d2', 1, 'blobs/old', 'parquet', 10, :sha, 'application/vnd.apache.parquet',"
    " 'old.parquet', '2024-03-01 12:00:01.000000', NULL, NULL)",
    "INSERT INTO grants (id, dataset_id, permission, created_at, created_by, user_id,"
    " organization_id, expires_at) VALUES"
    " ('g1', 'd2', 'download', '2024-03-01 12:00:00.000000', 'u2', NULL, 'o2',"
    " '2024-04-01 00:00:00.000000')",
    # A policy document that names only some fields: the others take their defaults.
    "INSERT INTO organization_policies (organization_id, policy) VALUES"
    ' (\'o1\', \'{"require_token": true, "audit_retention_days": 30,'
    ' "allowed_formats": ["csv", "original"]}\')',
    "INSERT INTO dataset_policies (dataset_id, policy) VALUES"
    " ('d1', '{\"max_download_bytes\": 5000000}')",
    "INSERT INTO issued_tokens (token_id, dataset_id, version, format, principal_id, issued_at,"
    " expires_at, max_uses, key_id) VALUES"
    " ('t1', 'd1', 2, 'csv', 'u1', '2024-03-01 12:00:00.000000',"
    " '2024-03-01 13:00:00.000000', 3, 'k1')",
    "INSERT INTO download_records (id, dataset_id, organization_id, version, format, status,"
    " channel, started_at, downloader, principal_id, api_key_id, token_id, bytes_sent,"
    " finished_at, denial_code, failure_reason, client_address, user_agent) VALUES"
    " ('r1', 'd1', 'o1', 2, 'csv', 'completed', 'api', '2024-03-01 12:00:00.000000',"
    " 'user:u1', 'u1', 'k1', NULL, 2048, '2024-03-01 12:00:02.500000', NULL, NULL,"
    " '203.0.113.9', 'curl/8.5'),"
    " ('r2', 'd1', 'o1', 2, 'parquet', 'aborted', 'browser', '2024-03-01 12:05:00.000000',"
    " 'user:u2', 'u2', NULL, NULL, 100, '2024-03-01 12:05:09.000000', NULL, NULL, NULL,"
    " NULL),"
    " ('r3', 'd1', 'o1', NULL, 'xlsx', 'denied', 'api', '2024-03-01 12:06:00.000000',"
    " 'anon:deadbeef', NULL, NULL, NULL, 0, '2024-03-01 12:06:00.000000',"
    " 'format_not_allowed', NULL, NULL, NULL),"
    " ('r4', 'd1', 'o1', 2, 'csv', 'started', 'token', '2024-03-02 09:00:00.000000',"
    " 'user:u1', 'u1', NULL, 't1', 512, NULL, NULL, NULL, NULL, NULL),"
    " ('r5', 'd2', 'o1', 1, 'original', 'failed', 'embedded', '2024-03-02 10:00:00.000000',"
    " 'user:u2', 'u2', NULL, NULL, 0, '2024-03-02 10:00:01.000000', NULL, 'file_missing',"
    " NULL, NULL)",
    "INSERT INTO rate_states (key, tat, expires_at) VALUES ('rate:o1:u1', 1709294400.25,"
    " 1709298000.0)",
    "INSERT INTO quota_counters (key, bytes, downloads, window_end) VALUES"
    " ('quota:o1:user:u1:day:2024-03-01', 2560, 2, '2024-03-02 00:00:00.000000')",
    "INSERT INTO reservations (id, bytes, downloads, expires_at) VALUES"
    " ('res1', 512, 1, '2024-03-02 09:00:00.000000')",
    "INSERT INTO reservation_charges (reservation_id, position, counter_key) VALUES"
    " ('res1', 0, 'quota:o1:user:u1:day:2024-03-01')",
    "INSERT INTO token_uses (token_id, uses, expires_at) VALUES"
    " ('t1', 1, '2024-03-01 13:00:00.000000')",
    "INSERT INTO token_sessions (token_id, session_key, last_seen, idle_until) VALUES"
    " ('t1', 's1', '2024-03-01 12:10:00.000000', '2024-03-01 12:40:00.000000')",
    "INSERT INTO download_sessions (session_key, last_seen, idle_until) VALUES"
    " ('s2', '2024-03-01 12:10:00.000000', '2024-03-01 12:40:00.000000')",
    "INSERT INTO revocations (token_id, expires_at) VALUES ('t9', '2024-03-05 00:00:00.000000')",
    "INSERT INTO cache_entries (key, value, expires_at) VALUES ('profile:ab', :blob, NULL)",
]


def _at(text_value: str) -> datetime:
    return datetime.fromisoformat(text_value).replace(tzinfo=UTC)


def _file(key: str, fmt: FileFormat, size: int, filename: str) -> DatasetFile:
    return DatasetFile(
        storage_key=key,
        format=fmt,
        size_bytes=size,
        sha256=SHA,
        media_type=fmt.media_type,
        filename=filename,
    )


def _record(id: str, **fields: object) -> DownloadRecord:
    base: dict[str, object] = {
        "id": id,
        "dataset_id": "d1",
        "organization_id": "o1",
        "version": 2,
        "format": "csv",
    }
    return DownloadRecord(**{**base, **fields})  # type: ignore[arg-type]


EXPECTED_RECORDS = [
    _record(
        "r1",
        status=DownloadStatus.COMPLETED,
        channel=Channel.API,
        started_at=NOON,
        downloader="user:u1",
        principal_id="u1",
        api_key_id="k1",
        bytes_sent=2048,
        finished_at=_at("2024-03-01 12:00:02.500000"),
        client_address="203.0.113.9",
        user_agent="curl/8.5",
        logical=True,
    ),
    _record(
        "r2",
        format="parquet",
        status=DownloadStatus.ABORTED,
        channel=Channel.BROWSER,
        started_at=_at("2024-03-01 12:05:00"),
        downloader="user:u2",
        principal_id="u2",
        bytes_sent=100,
        finished_at=_at("2024-03-01 12:05:09"),
        logical=True,
    ),
    _record(
        "r3",
        version=None,
        format="xlsx",
        status=DownloadStatus.DENIED,
        channel=Channel.API,
        started_at=_at("2024-03-01 12:06:00"),
        downloader="anon:deadbeef",
        finished_at=_at("2024-03-01 12:06:00"),
        denial_code="format_not_allowed",
        logical=False,
    ),
    _record(
        "r4",
        status=DownloadStatus.STARTED,
        channel=Channel.TOKEN,
        started_at=_at("2024-03-02 09:00:00"),
        downloader="user:u1",
        principal_id="u1",
        token_id="t1",
        bytes_sent=512,
        logical=True,
    ),
    _record(
        "r5",
        dataset_id="d2",
        version=1,
        format="original",
        status=DownloadStatus.FAILED,
        channel=Channel.EMBEDDED,
        started_at=_at("2024-03-02 10:00:00"),
        downloader="user:u2",
        principal_id="u2",
        finished_at=_at("2024-03-02 10:00:01"),
        failure_reason="file_missing",
        logical=True,
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """Where this module's databases are made: a SQLite directory or a PostgreSQL server."""
    root = tmp_path_factory.mktemp(f"migrations-{request.param}")
    if request.param == "postgres":
        return Backend("postgres", root, postgres_url())
    return Backend("sqlite", root)


@pytest.fixture
async def empty(backend: Backend) -> AsyncIterator[tuple[Backend, SqlDatabase]]:
    """A brand-new database that no migration has touched yet."""
    db = backend.fresh()
    try:
        yield backend, db
    finally:
        await backend.close(db)


async def _row_counts(db: SqlDatabase) -> dict[str, int]:
    async with db.read() as conn:
        names = await conn.run_sync(lambda c: inspect(c).get_table_names())
        return {
            name: (await conn.execute(text(f'SELECT count(*) FROM "{name}"'))).scalar_one()  # noqa: S608 - names come from the schema itself
            for name in sorted(names)
            if name != "alembic_version"
        }


async def test_a_new_database_is_behind_until_upgraded(
    empty: tuple[Backend, SqlDatabase],
) -> None:
    """An empty database is at no revision, one at revision 0001 is behind, head is current."""
    _, db = empty
    assert await db.current() is None
    assert not await db.is_current()
    await db.upgrade("0001")
    assert await db.current() == "0001"
    assert not await db.is_current()
    await db.upgrade()
    assert await db.current() == await db.head() == "0002"
    assert await db.is_current()
    await db.upgrade()
    assert await db.is_current()


async def test_upgrading_a_populated_database_keeps_everything(
    empty: tuple[Backend, SqlDatabase],
) -> None:
    """Rows written at 0001 all survive the upgrade; new columns get defaults and a backfill."""
    _, db = empty
    await db.upgrade("0001")
    async with db.write() as conn:
        for statement in REVISION_1_ROWS:
            await conn.execute(text(statement), {"sha": SHA, "blob": b"\x00profile\xff"})
    before = await _row_counts(db)
    assert all(before[name] > 0 for name in before), before

    await db.upgrade()

    assert await db.is_current()
    assert await _row_counts(db) == before
    audit = SqlAuditLog(db)
    for expected in EXPECTED_RECORDS:
        assert await audit.get(expected.id) == expected
    page = await audit.history(HistoryQuery(principal_id="u1"))
    assert [r.id for r in page] == ["r4", "r1"]
    analytics = await audit.analytics("d1", since=NOON, until=NOON + timedelta(days=2), top=1)
    assert (analytics.downloads, analytics.requests, analytics.denials) == (3, 3, 1)

    catalog = SqlCatalog(db)
    assert await catalog.get_organization("acme") == Organization(
        id="o1", slug="acme", title="Acme Research", created_at=NOON
    )
    assert list(await catalog.memberships_of("u2")) == [
        Membership("o1", "u2", Role.MEMBER),
        Membership("o2", "u2", Role.MEMBER),
    ]
    assert await catalog.get_api_key("k1") == ApiKey(
        id="k1",
        user_id="u1",
        name="ci",
        scopes=frozenset({Scope.READ, Scope.DOWNLOAD}),
        secret_hash=SHA,
        created_at=NOON,
    )
    updated = _at("2024-03-02 08:30:00.250000")
    rainfall = Dataset(
        id="d1",
        slug="rainfall",
        title="Rainfall",
        description="Daily rain",
        organization_id="o1",
        owner_id="u1",
        visibility=Visibility.PUBLIC,
        tags=("weather", "rain"),
        license="CC-BY-4.0",
        version=2,
        file=_file("blobs/v2", FileFormat.CSV, 2048, "rain.csv"),
        status=DatasetStatus.READY,
        created_at=NOON,
        updated_at=updated,
        row_count=365,
        column_count=4,
    )
    assert await catalog.find_dataset("o1", "rainfall") == rainfall
    assert [d.id for d in await catalog.list_deleted_datasets()] == ["d2"]
    assert list(await catalog.list_versions("d1")) == [
        DatasetVersion(
            dataset_id="d1",
            number=1,
            file=_file("blobs/v1", FileFormat.CSV, 1024, "rain.csv"),
            created_at=NOON,
            created_by="u1",
            removed_at=updated,
        ),
        DatasetVersion(
            dataset_id="d1",
            number=2,
            file=rainfall.file,
            created_at=updated,
            created_by="u1",
        ),
    ]
    assert list(await catalog.list_grants("d2")) == [
        Grant(
            id="g1",
            dataset_id="d2",
            permission=Permission.DOWNLOAD,
            created_at=NOON,
            created_by="u2",
            organization_id="o2",
            expires_at=_at("2024-04-01 00:00:00"),
        )
    ]
    assert await catalog.get_policy("o1") == DownloadPolicy(
        require_token=True,
        audit_retention_days=30,
        allowed_formats=frozenset({"csv", "original"}),
    )
    assert await catalog.get_dataset_policy("d1") == PolicyOverride(max_download_bytes=5_000_000)
    assert (await catalog.get_token("t1")).max_uses == 3

    usage = SqlUsageStore(db)
    counter = "quota:o1:user:u1:day:2024-03-01"
    assert list(await usage.usage([counter])) == [Usage(bytes=2560, downloads=2)]
    assert await usage.settle("res1", 500)
    assert list(await usage.usage([counter])) == [Usage(bytes=2548, downloads=2)]
    assert await usage.get_tat("rate:o1:u1") == 1709294400.25
    assert await usage.is_revoked("t9")
    continued = await usage.use_token(
        "t1",
        "s1",
        max_uses=3,
        now=_at("2024-03-01 12:20:00"),
        idle_seconds=1800,
        expires_at=_at("2024-03-01 13:00:00"),
    )
    assert continued == TokenUse(allowed=True, uses=1, new_session=False)
    assert not await usage.touch_session("s2", now=_at("2024-03-01 12:30:00"), idle_seconds=1800)
    assert await SqlCache(db).get("profile:ab") == b"\x00profile\xff"


async def test_head_schema_has_no_drift_from_the_tables(
    empty: tuple[Backend, SqlDatabase],
) -> None:
    """After upgrading, the database holds exactly tables.py: no table, column or index differs."""
    _, db = empty
    await db.upgrade()

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))

    def reflected(connection: Connection) -> dict[str, tuple[set[str], set[str]]]:
        inspector = inspect(connection)
        return {
            name: (
                {c["name"] for c in inspector.get_columns(name)},
                {str(i["name"]) for i in inspector.get_indexes(name)},
            )
            for name in inspector.get_table_names()
        }

    async with db.read() as conn:
        assert await conn.run_sync(differences) == []
        found = await conn.run_sync(reflected)
    assert set(found) == {*metadata.tables, "alembic_version"}
    for name, table in metadata.tables.items():
        columns, indexes = found[name]
        assert columns == {c.name for c in table.columns}, name
        assert indexes >= {str(i.name) for i in table.indexes if not i.unique}, name


async def test_downgrade_and_upgrade_again(empty: tuple[Backend, SqlDatabase]) -> None:
    """Revision 0002 can be undone and redone; records keep their original columns."""
    _, db = empty
    await db.upgrade("0001")
    async with db.write() as conn:
        for statement in REVISION_1_ROWS:
            await conn.execute(text(statement), {"sha": SHA, "blob": b"x"})
    await db.upgrade()

    def downgrade(connection: Connection) -> None:
        command.downgrade(db.alembic_config(connection), "0001")

    async with db.write() as conn:
        await conn.run_sync(downgrade)
    assert await db.current() == "0001"
    async with db.read() as conn:
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("download_records")}
        )
    assert "logical" not in columns
    await db.upgrade()
    assert await SqlAuditLog(db).get("r1") == EXPECTED_RECORDS[0]
