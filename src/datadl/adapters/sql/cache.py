"""The Cache port on SQL: byte values with wall-clock expiry, shared by every process."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import and_, delete, or_, select

from datadl.adapters.sql.database import SqlDatabase
from datadl.adapters.sql.tables import cache_entries

c = cache_entries.c


class SqlCache:
    """The Cache port in a SQL table, for processes that share a database but no Redis.

    ``clock`` gives wall-clock epoch seconds (``time.time`` by default): unlike the
    memory cache's monotonic clock, it means the same in every process. An entry
    expires once the clock reaches its deadline. Expired rows are ignored by reads,
    replaced by writes and removed by ``purge_expired``; nothing is evicted by size.
    """

    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def _deadline(self, ttl_seconds: float | None) -> float | None:
        return None if ttl_seconds is None else self._clock() + ttl_seconds

    async def get(self, key: str) -> bytes | None:
        live = or_(c.expires_at.is_(None), c.expires_at > self._clock())
        async with self._db.read() as conn:
            value = await conn.scalar(select(c.value).where(c.key == key, live))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        upsert = self._db.insert(cache_entries).values(
            key=key, value=bytes(value), expires_at=self._deadline(ttl_seconds)
        )
        async with self._db.write() as conn:
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["key"],
                    set_={"value": upsert.excluded.value, "expires_at": upsert.excluded.expires_at},
                )
            )

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        now = self._clock()
        upsert = self._db.insert(cache_entries).values(
            key=key, value=bytes(value), expires_at=self._deadline(ttl_seconds)
        )
        # One statement: insert, or take over a row only if it has expired. Of concurrent
        # adds exactly one gets a row back.
        statement = upsert.on_conflict_do_update(
            index_elements=["key"],
            set_={"value": upsert.excluded.value, "expires_at": upsert.excluded.expires_at},
            where=and_(c.expires_at.is_not(None), c.expires_at <= now),
        ).returning(c.key)
        async with self._db.write() as conn:
            return (await conn.execute(statement)).first() is not None

    async def delete(self, key: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(cache_entries).where(c.key == key))

    async def purge_expired(self) -> int:
        """Remove every expired entry; how many went."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(cache_entries).where(c.expires_at <= self._clock()))
            return int(result.rowcount)
