"""Killing the database connection in the middle of an adapter's transaction keeps nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest

from datadl.adapters.sql import SqlCatalog, SqlDatabase, SqlUsageStore
from datadl.domain.errors import NotFound, Unavailable
from datadl.domain.model import DatasetVersion
from datadl.domain.policy import QuotaLimit
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.testing.builders import T0, dataset, dataset_file, organization, user
from tests.contract.test_sql import Backend, driver_dsn, postgres  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres


async def _kill_when_blocked(
    db: SqlDatabase, url: str, table: str, work: Callable[[], Awaitable[object]]
) -> BaseException | None:
    """Run ``work`` while ``table`` is locked; once it waits on the lock, kill its backend.

    The adapter's transaction has then written its first statements and is stuck on the
    next, which is exactly "interrupted in the middle".
    """
    holder = await asyncpg.connect(driver_dsn(url))
    killer = await asyncpg.connect(driver_dsn(url))
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(f'LOCK TABLE "{db.schema}"."{table}" IN ACCESS EXCLUSIVE MODE')
        task = asyncio.create_task(work())
        pid = None
        for _ in range(200):
            pid = await killer.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid <> $1 AND query ILIKE $2 LIMIT 1",
                holder.get_server_pid(),
                f"%{table}%",
            )
            if pid is not None:
                break
            await asyncio.sleep(0.025)
        assert pid is not None, "the adapter never reached the locked table"
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await lock.rollback()
        try:
            await asyncio.wait_for(task, 30)
        except BaseException as exc:
            return exc
        return None
    finally:
        await holder.close()
        await killer.close()


@pytest.fixture
async def db(postgres: Backend) -> AsyncIterator[SqlDatabase]:  # noqa: F811
    database = await postgres.open()
    try:
        yield database
    finally:
        await postgres.close(database)


async def test_killed_add_dataset_leaves_no_dataset(db: SqlDatabase, postgres: Backend) -> None:  # noqa: F811
    """A dataset whose version insert is cut off is not in the catalogue at all."""
    catalog = SqlCatalog(db)
    await catalog.add_organization(organization("o1"))
    await catalog.add_user(user("u1"))
    new = dataset("d1", organization_id="o1", owner_id="u1")
    version = DatasetVersion("d1", 1, dataset_file(), T0, "u1")
    error = await _kill_when_blocked(
        db, str(postgres.url), "dataset_versions", lambda: catalog.add_dataset(new, version)
    )
    assert isinstance(error, Unavailable)
    with pytest.raises(NotFound):
        await catalog.get_dataset("d1")
    assert await catalog.list_versions("d1") == []
    # The catalogue still works, and the same dataset can be added afterwards.
    await catalog.add_dataset(new, version)
    assert (await catalog.get_dataset("d1")).id == "d1"


async def test_killed_reserve_leaves_no_charge(db: SqlDatabase, postgres: Backend) -> None:  # noqa: F811
    """A reservation cut off after charging its counters leaves them as they were."""
    store = SqlUsageStore(db)
    limit = QuotaLimit(bytes=10_000, downloads=10)
    charges = tuple(
        QuotaCharge.for_subject(subject, sid, limit, T0, organization_id="o1")
        for subject, sid in ((QuotaSubject.USER, "u1"), (QuotaSubject.ORGANIZATION, "o1"))
    )
    reservation = Reservation("r1", charges, 500, 1, T0 + timedelta(hours=1))
    error = await _kill_when_blocked(
        db, str(postgres.url), "reservation_charges", lambda: store.reserve(reservation)
    )
    assert isinstance(error, Unavailable)
    usage = await store.usage([c.key for c in charges])
    assert [(u.bytes, u.downloads) for u in usage] == [(0, 0), (0, 0)]
    assert await store.settle("r1", 0) is False
    assert (await store.reserve(reservation)).ok
