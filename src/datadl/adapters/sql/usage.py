"""The UsageStore port on SQL: rate-limit state, quota counters, token uses, revocations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from datadl.adapters.sql.database import SqlDatabase
from datadl.adapters.sql.tables import (
    UtcDateTime,
    download_sessions,
    quota_counters,
    rate_states,
    reservation_charges,
    reservations,
    revocations,
    token_sessions,
    token_uses,
)
from datadl.domain.errors import Conflict
from datadl.domain.quotas import Reservation, ReserveOutcome, Usage, first_refusal, settled_amount
from datadl.ports.usage import CleanupCounts, TokenUse

_LATEST = datetime.max.replace(tzinfo=UTC)


class _Refused(Exception):
    """Unwinds a transaction whose check refused the change, so that nothing of it stays."""

    def __init__(self, result: Any) -> None:
        super().__init__("refused")
        self.result = result


def _idle(idle_seconds: float) -> timedelta:
    if idle_seconds < 0:
        raise ValueError("idle_seconds must not be negative")
    return timedelta(seconds=idle_seconds)


def _plus(moment: datetime, span: timedelta) -> datetime:
    try:
        return moment + span
    except OverflowError:
        return _LATEST


def _later(a: datetime, b: datetime) -> datetime:
    return a if a >= b else b


@attrs.frozen
class _Session:
    last_seen: datetime
    idle_until: datetime

    def continues(self, now: datetime, idle: timedelta) -> bool:
        # Whether ``now`` is within ``idle`` of the last request, with the idle time
        # the caller gives now (not the one stored), as the memory store decides.
        return now - self.last_seen <= idle

    def seen(self, now: datetime, idle: timedelta) -> dict[str, datetime]:
        # Requests handled by several workers may arrive out of order; time never goes back.
        last_seen = _later(self.last_seen, now)
        return {"last_seen": last_seen, "idle_until": _plus(last_seen, idle)}


def _fresh(now: datetime, idle: timedelta) -> dict[str, datetime]:
    return {"last_seen": now, "idle_until": _plus(now, idle)}


class SqlUsageStore:
    """The UsageStore port on a SQL database, atomic across every process that shares it.

    Each check-and-change is one transaction that holds what it checks: a single
    conditional statement where one suffices (compare-and-set, a revocation, settle's
    claim), else row locks taken in a fixed order before the check (on PostgreSQL by an
    upsert that touches the row, or ``SELECT ... FOR UPDATE``; on SQLite the transaction
    holds the database's write lock from its ``BEGIN IMMEDIATE``). A refused change
    rolls back and leaves nothing. Behaves as ``MemoryUsageStore``: a settled
    reservation is forgotten at once, token sessions are apart from ``touch_session``'s,
    and whatever is at or past its expiry has expired.
    """

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    # rate limits

    async def get_tat(self, key: str) -> float | None:
        async with self._db.read() as conn:
            tat = await conn.scalar(select(rate_states.c.tat).where(rate_states.c.key == key))
        return None if tat is None else float(tat)

    async def compare_and_set_tat(
        self, key: str, expected: float | None, new: float, *, expires_at: float
    ) -> bool:
        s = rate_states.c
        async with self._db.write() as conn:
            if expected is None:
                # Only an absent key holds None: the insert wins or finds a row and stops.
                inserted = await conn.execute(
                    self._db.insert(rate_states)
                    .values(key=key, tat=new, expires_at=expires_at)
                    .on_conflict_do_nothing(index_elements=["key"])
                    .returning(s.key)
                )
                return inserted.first() is not None
            changed = await conn.execute(
                update(rate_states)
                .where(s.key == key, s.tat == expected)
                .values(tat=new, expires_at=expires_at)
            )
            return changed.rowcount == 1

    # quotas

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        try:
            async with self._db.write() as conn:
                return await self._reserve(conn, reservation)
        except _Refused as refused:
            outcome: ReserveOutcome = refused.result
            return outcome

    async def _reserve(self, conn: AsyncConnection, reservation: Reservation) -> ReserveOutcome:
        claimed = await conn.execute(
            self._db.insert(reservations)
            .values(
                id=reservation.id,
                bytes=reservation.bytes,
                downloads=reservation.downloads,
                expires_at=reservation.expires_at,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(reservations.c.id)
        )
        if claimed.first() is None:
            raise Conflict(f"A reservation with id {reservation.id!r} exists.")
        window_ends: dict[str, datetime] = {}
        for charge in reservation.charges:
            known = window_ends.get(charge.key)
            window_ends[charge.key] = (
                charge.window_end if known is None else _later(known, charge.window_end)
            )
        held = await self._lock_counters(conn, window_ends)
        outcome = first_refusal(
            reservation.charges,
            [held[charge.key][0] for charge in reservation.charges],
            reservation.bytes,
            reservation.downloads,
        )
        if not outcome.ok:
            raise _Refused(outcome)
        # A counter named twice is charged twice, as the memory store does.
        times = Counter(charge.key for charge in reservation.charges)
        c = quota_counters.c
        if times:
            await conn.execute(
                update(quota_counters)
                .where(c.key == bindparam("counter"))
                .values(
                    bytes=bindparam("new_bytes"),
                    downloads=bindparam("new_downloads"),
                    window_end=bindparam("new_window_end", type_=UtcDateTime()),
                ),
                [
                    {
                        "counter": key,
                        "new_bytes": held[key][0].bytes + n * reservation.bytes,
                        "new_downloads": held[key][0].downloads + n * reservation.downloads,
                        "new_window_end": _later(held[key][1], window_ends[key]),
                    }
                    for key, n in sorted(times.items())
                ],
            )
            await conn.execute(
                insert(reservation_charges),
                [
                    {"reservation_id": reservation.id, "position": i, "counter_key": charge.key}
                    for i, charge in enumerate(reservation.charges)
                ],
            )
        return outcome

    async def _lock_counters(
        self, conn: AsyncConnection, window_ends: dict[str, datetime]
    ) -> dict[str, tuple[Usage, datetime]]:
        if not window_ends:
            return {}
        c = quota_counters.c
        # One statement inserts each missing counter at zero and touches each existing
        # one with a no-op update: this transaction then holds every row's lock and reads
        # its latest committed value. Rows are taken in key order, so two reservations
        # sharing counters cannot deadlock; a refused reservation rolls new rows back.
        upsert = self._db.insert(quota_counters)
        rows = await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["key"], set_={"key": upsert.excluded.key}
            ).returning(c.key, c.bytes, c.downloads, c.window_end),
            [
                {"key": key, "bytes": 0, "downloads": 0, "window_end": window_ends[key]}
                for key in sorted(window_ends)
            ],
        )
        return {
            row.key: (Usage(bytes=int(row.bytes), downloads=int(row.downloads)), row.window_end)
            for row in rows
        }

    async def settle(self, reservation_id: str, bytes_sent: int) -> bool:
        ch = reservation_charges.c
        async with self._db.write() as conn:
            # The charges go first: a concurrent settle of the same reservation waits
            # on their row locks, then finds them, and the reservation, gone.
            keys = (
                await conn.scalars(
                    delete(reservation_charges)
                    .where(ch.reservation_id == reservation_id)
                    .returning(ch.counter_key)
                )
            ).all()
            claimed = (
                await conn.execute(
                    delete(reservations)
                    .where(reservations.c.id == reservation_id)
                    .returning(reservations.c.bytes, reservations.c.downloads)
                )
            ).first()
            if claimed is None:
                return False
            held = Reservation(
                id=reservation_id,
                charges=(),
                bytes=int(claimed.bytes),
                downloads=int(claimed.downloads),
                expires_at=_LATEST,
            )
            delta_bytes, delta_downloads = settled_amount(held, bytes_sent)
            if keys:
                c = quota_counters.c
                # An UPDATE of a counter whose window was cleaned up revives nothing.
                await conn.execute(
                    update(quota_counters)
                    .where(c.key == bindparam("counter"))
                    .values(
                        bytes=c.bytes + bindparam("delta_bytes"),
                        downloads=c.downloads + bindparam("delta_downloads"),
                    ),
                    [
                        {
                            "counter": key,
                            "delta_bytes": n * delta_bytes,
                            "delta_downloads": n * delta_downloads,
                        }
                        for key, n in sorted(Counter(keys).items())
                    ],
                )
            return True

    async def usage(self, keys: Sequence[str]) -> Sequence[Usage]:
        if not keys:
            return []
        c = quota_counters.c
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(c.key, c.bytes, c.downloads).where(c.key.in_(sorted(set(keys))))
            )
            found = {
                row.key: Usage(bytes=int(row.bytes), downloads=int(row.downloads)) for row in rows
            }
        return [found.get(key, Usage()) for key in keys]

    # tokens and sessions

    async def use_token(
        self,
        token_id: str,
        session_key: str,
        *,
        max_uses: int | None,
        now: datetime,
        idle_seconds: float,
        expires_at: datetime,
    ) -> TokenUse:
        idle = _idle(idle_seconds)
        try:
            async with self._db.write() as conn:
                return await self._use_token(
                    conn, token_id, session_key, max_uses, now, idle, expires_at
                )
        except _Refused as refused:
            use: TokenUse = refused.result
            return use

    async def _use_token(
        self,
        conn: AsyncConnection,
        token_id: str,
        session_key: str,
        max_uses: int | None,
        now: datetime,
        idle: timedelta,
        expires_at: datetime,
    ) -> TokenUse:
        t = token_uses.c
        # Lock the token's row (creating it at zero uses if new); a refusal rolls it back.
        upsert = self._db.insert(token_uses).values(
            token_id=token_id, uses=0, expires_at=expires_at
        )
        token = (
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["token_id"], set_={"token_id": upsert.excluded.token_id}
                ).returning(t.uses, t.expires_at)
            )
        ).one()
        uses = int(token.uses)
        kept_until = _later(token.expires_at, expires_at)
        s = token_sessions.c
        this_session = and_(s.token_id == token_id, s.session_key == session_key)
        found = (await conn.execute(select(s.last_seen, s.idle_until).where(this_session))).first()
        session = None if found is None else _Session(found.last_seen, found.idle_until)
        if session is not None and session.continues(now, idle):
            await conn.execute(
                update(token_sessions).where(this_session).values(session.seen(now, idle))
            )
            await conn.execute(
                update(token_uses).where(t.token_id == token_id).values(expires_at=kept_until)
            )
            return TokenUse(allowed=True, uses=uses, new_session=False)
        if max_uses is not None and uses >= max_uses:
            raise _Refused(TokenUse(allowed=False, uses=uses, new_session=False))
        await conn.execute(
            update(token_uses)
            .where(t.token_id == token_id)
            .values(uses=uses + 1, expires_at=kept_until)
        )
        upsert_session = self._db.insert(token_sessions).values(
            token_id=token_id, session_key=session_key, **_fresh(now, idle)
        )
        await conn.execute(
            upsert_session.on_conflict_do_update(
                index_elements=["token_id", "session_key"],
                set_={
                    "last_seen": upsert_session.excluded.last_seen,
                    "idle_until": upsert_session.excluded.idle_until,
                },
            )
        )
        return TokenUse(allowed=True, uses=uses + 1, new_session=True)

    async def touch_session(self, session_key: str, *, now: datetime, idle_seconds: float) -> bool:
        idle = _idle(idle_seconds)
        s = download_sessions.c
        async with self._db.write() as conn:
            opened = await conn.execute(
                self._db.insert(download_sessions)
                .values(session_key=session_key, **_fresh(now, idle))
                .on_conflict_do_nothing(index_elements=["session_key"])
                .returning(s.session_key)
            )
            if opened.first() is not None:
                return True
            # The row exists: lock it, then continue or restart the session.
            found = (
                await conn.execute(
                    select(s.last_seen, s.idle_until)
                    .where(s.session_key == session_key)
                    .with_for_update()
                )
            ).first()
            session = None if found is None else _Session(found.last_seen, found.idle_until)
            continued = session is not None and session.continues(now, idle)
            values = (
                session.seen(now, idle) if session is not None and continued else _fresh(now, idle)
            )
            if session is None:
                # Cleanup removed it between the two statements: open it anew.
                await conn.execute(
                    insert(download_sessions).values(session_key=session_key, **values)
                )
            else:
                await conn.execute(
                    update(download_sessions).where(s.session_key == session_key).values(values)
                )
            return not continued

    async def revoke_token(self, token_id: str, *, expires_at: datetime) -> None:
        v = revocations.c
        upsert = self._db.insert(revocations).values(token_id=token_id, expires_at=expires_at)
        async with self._db.write() as conn:
            # Revoking again only ever extends how long the revocation is remembered.
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["token_id"],
                    set_={"expires_at": upsert.excluded.expires_at},
                    where=upsert.excluded.expires_at > v.expires_at,
                )
            )

    async def is_revoked(self, token_id: str) -> bool:
        v = revocations.c
        async with self._db.read() as conn:
            found = await conn.scalar(select(v.token_id).where(v.token_id == token_id))
        return found is not None

    # cleanup

    async def cleanup(self, now: datetime) -> CleanupCounts:
        r, ch, q = reservations.c, reservation_charges.c, quota_counters.c
        t, s = token_uses.c, token_sessions.c
        async with self._db.write() as conn:

            async def drop(statement: Any) -> int:
                return int((await conn.execute(statement)).rowcount)

            # Rows are locked in the order settle, reserve and use_token lock them
            # (charges before their reservation, counters by key, a token before its
            # sessions), so that a cleanup running beside them cannot deadlock.
            expired = select(r.id).where(r.expires_at <= now)
            await conn.execute(delete(reservation_charges).where(ch.reservation_id.in_(expired)))
            reservations_dropped = await drop(delete(reservations).where(r.expires_at <= now))
            past = select(q.key).where(q.window_end <= now).order_by(q.key).with_for_update()
            counters = await drop(delete(quota_counters).where(q.key.in_(past)))
            ended = select(t.token_id).where(t.expires_at <= now).order_by(t.token_id)
            await conn.execute(ended.with_for_update())
            sessions = await drop(
                delete(token_sessions).where(or_(s.idle_until < now, s.token_id.in_(ended)))
            )
            token_uses_dropped = await drop(delete(token_uses).where(t.expires_at <= now))
            revocations_dropped = await drop(
                delete(revocations).where(revocations.c.expires_at <= now)
            )
            sessions += await drop(
                delete(download_sessions).where(download_sessions.c.idle_until < now)
            )
            rate = await drop(
                delete(rate_states).where(rate_states.c.expires_at <= now.timestamp())
            )
        return CleanupCounts(
            reservations=reservations_dropped,
            counters=counters,
            token_uses=token_uses_dropped,
            revocations=revocations_dropped,
            sessions=sessions,
            rate_states=rate,
        )
