"""The AuditLog port on SQL: download records, keyset history and analytics by aggregate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from datadl.adapters.sql.database import SqlDatabase
from datadl.adapters.sql.tables import UtcDateTime, download_records, key_type
from datadl.domain.accounting import (
    Analytics,
    Channel,
    DayCount,
    DownloadRecord,
    DownloadStatus,
    TopDownloader,
)
from datadl.domain.errors import NotFound
from datadl.ports.audit import HistoryQuery

r = download_records.c


def _record(row: RowMapping) -> DownloadRecord:
    return DownloadRecord(
        id=row["id"],
        dataset_id=row["dataset_id"],
        organization_id=row["organization_id"],
        version=row["version"],
        format=row["format"],
        status=DownloadStatus(row["status"]),
        channel=Channel(row["channel"]),
        started_at=row["started_at"],
        downloader=row["downloader"],
        principal_id=row["principal_id"],
        api_key_id=row["api_key_id"],
        token_id=row["token_id"],
        byte_range=row["byte_range"],
        bytes_expected=row["bytes_expected"],
        bytes_sent=row["bytes_sent"],
        finished_at=row["finished_at"],
        denial_code=row["denial_code"],
        failure_reason=row["failure_reason"],
        client_address=row["client_address"],
        user_agent=row["user_agent"],
        session_key=row["session_key"],
        logical=bool(row["logical"]),
    )


def _record_values(record: DownloadRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "dataset_id": record.dataset_id,
        "organization_id": record.organization_id,
        "version": record.version,
        "format": record.format,
        "status": record.status.value,
        "channel": record.channel.value,
        "started_at": record.started_at,
        "downloader": record.downloader,
        "principal_id": record.principal_id,
        "api_key_id": record.api_key_id,
        "token_id": record.token_id,
        "byte_range": record.byte_range,
        "bytes_expected": record.bytes_expected,
        "bytes_sent": record.bytes_sent,
        "finished_at": record.finished_at,
        "denial_code": record.denial_code,
        "failure_reason": record.failure_reason,
        "client_address": record.client_address,
        "user_agent": record.user_agent,
        "session_key": record.session_key,
        "logical": record.logical,
    }


def _finished_before(before: datetime) -> ColumnElement[bool]:
    # A record still ``started`` is never purged, whatever its finished_at says.
    return and_(
        r.status != DownloadStatus.STARTED.value,
        r.finished_at.is_not(None),
        r.finished_at < before,
    )


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _total(value: Any, condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def history_statement(query: HistoryQuery) -> Select[Any]:
    """The SELECT of one history page: newest first, after the page that ended at ``before``.

    It walks ``ix_download_records_dataset_history`` or ``..._principal_history``
    backwards; the keyset bound is a row comparison, which the index serves directly.
    """
    conditions: list[ColumnElement[bool]] = []
    if query.dataset_id is not None:
        conditions.append(r.dataset_id == query.dataset_id)
    if query.principal_id is not None:
        conditions.append(r.principal_id == query.principal_id)
    if query.status is not None:
        conditions.append(r.status == query.status.value)
    if query.before is not None:
        started_at, record_id = query.before
        conditions.append(
            tuple_(r.started_at, r.id)
            < tuple_(literal(started_at, UtcDateTime()), literal(record_id, key_type()))
        )
    return (
        select(download_records)
        .where(*conditions)
        .order_by(r.started_at.desc(), r.id.desc())
        .limit(query.limit)
    )


class SqlAuditLog:
    """The AuditLog port on a SQL database (SQLite or PostgreSQL).

    History pages walk the (dataset or principal, started_at, id) indexes backwards.
    Analytics are aggregated by the database (per day in UTC, per format, per
    downloader) and equal ``analytics_from_records`` over the same records; a
    downloader's principal is taken from its earliest record, as ``MemoryAuditLog`` does.
    Records are read back in UTC.
    """

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._save_statement: Any = None

    async def append(self, record: DownloadRecord) -> None:
        async with self._db.write(
            conflict=f"A download record with id {record.id!r} exists."
        ) as conn:
            await conn.execute(insert(download_records).values(_record_values(record)))

    async def update(self, record: DownloadRecord) -> None:
        values = _record_values(record)
        del values["id"]
        async with self._db.write() as conn:
            result = await conn.execute(
                update(download_records).where(r.id == record.id).values(values)
            )
            if result.rowcount == 0:
                raise NotFound(f"No download record {record.id!r}.")

    async def save(self, records: Sequence[DownloadRecord]) -> None:
        if not records:
            return
        if self._save_statement is None:
            upsert = self._db.insert(download_records)
            replaced = {c.name: upsert.excluded[c.name] for c in r if c.name != "id"}
            self._save_statement = upsert.on_conflict_do_update(
                index_elements=["id"], set_=replaced
            )
        statement = self._save_statement
        async with self._db.write() as conn:
            # One statement executed for many rows: compiled once, cached by SQLAlchemy.
            await conn.execute(statement, [_record_values(rec) for rec in records])

    async def get(self, record_id: str) -> DownloadRecord:
        async with self._db.read() as conn:
            row = (
                (await conn.execute(select(download_records).where(r.id == record_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"No download record {record_id!r}.")
        return _record(row)

    async def history(self, query: HistoryQuery) -> Sequence[DownloadRecord]:
        if query.limit <= 0:
            return []
        async with self._db.read() as conn:
            rows = await conn.execute(history_statement(query))
            return [_record(row) for row in rows.mappings()]

    def _day(self) -> Any:
        if self._db.dialect == "postgresql":
            return func.date(func.timezone("UTC", r.started_at))
        # SQLite keeps UTC times as ISO text; its first ten characters are the UTC day.
        return func.substr(r.started_at, 1, 10)

    async def analytics(
        self, dataset_id: str, *, since: datetime, until: datetime, top: int = 10
    ) -> Analytics:
        in_period = and_(r.dataset_id == dataset_id, r.started_at >= since, r.started_at < until)
        denied = r.status == DownloadStatus.DENIED.value
        allowed = r.status != DownloadStatus.DENIED.value
        logical = and_(allowed, r.logical.is_(True))
        day = self._day().label("day")
        per_day = (
            select(
                day,
                _count(logical).label("downloads"),
                _count(allowed).label("requests"),
                _total(r.bytes_sent, allowed).label("bytes"),
                _count(denied).label("denials"),
                _count(r.status == DownloadStatus.FAILED.value).label("failures"),
                _count(r.status == DownloadStatus.COMPLETED.value).label("completed"),
                _count(r.status == DownloadStatus.ABORTED.value).label("aborted"),
            )
            .where(in_period)
            .group_by(day)
        )
        # ``r.denial_code or "unknown"`` in the reference: an empty code counts as unknown.
        code = func.coalesce(func.nullif(r.denial_code, ""), "unknown").label("code")
        by_code = select(code, func.count().label("n")).where(in_period, denied).group_by(code)
        per_format = (
            select(r.format, func.count().label("n")).where(in_period, logical).group_by(r.format)
        )
        unique = select(func.count(func.distinct(r.downloader))).where(in_period, allowed)
        async with self._db.read(snapshot=True) as conn:
            day_rows = (await conn.execute(per_day)).mappings().all()
            codes = (await conn.execute(by_code)).all()
            formats = (await conn.execute(per_format)).all()
            unique_downloaders = int(await conn.scalar(unique) or 0)
            top_rows = await self._top(conn, dataset_id, since, until, top, unique_downloaders)

        # The zero-filled series spans the same days as the domain reference's.
        days: dict[date, Counter[str]] = {}
        day_at = since.date()
        while day_at <= (until - timedelta(microseconds=1)).date():
            days[day_at] = Counter()
            day_at += timedelta(days=1)
        totals: Counter[str] = Counter()
        for row in day_rows:
            counts = Counter({k: int(v) for k, v in row.items() if k != "day"})
            days.setdefault(_as_date(row["day"]), Counter()).update(counts)
            totals.update(counts)
        return Analytics(
            since=since,
            until=until,
            downloads=totals["downloads"],
            requests=totals["requests"],
            bytes=totals["bytes"],
            unique_downloaders=unique_downloaders,
            completed=totals["completed"],
            aborted=totals["aborted"],
            failures=totals["failures"],
            denials=totals["denials"],
            denials_by_code=dict(sorted((c, int(n)) for c, n in codes)),
            per_day=tuple(
                DayCount(
                    day=d,
                    downloads=c["downloads"],
                    requests=c["requests"],
                    bytes=c["bytes"],
                    denials=c["denials"],
                    failures=c["failures"],
                )
                for d, c in sorted(days.items())
            ),
            per_format=dict(sorted((f, int(n)) for f, n in formats)),
            top_downloaders=top_rows,
        )

    async def purge(self, organization_id: str, before: datetime) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(download_records).where(
                    r.organization_id == organization_id, _finished_before(before)
                )
            )
            return int(result.rowcount)

    async def purge_dataset(self, dataset_id: str, before: datetime) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(download_records).where(r.dataset_id == dataset_id, _finished_before(before))
            )
            return int(result.rowcount)

    async def _top(
        self,
        conn: AsyncConnection,
        dataset_id: str,
        since: datetime,
        until: datetime,
        top: int,
        unique_downloaders: int,
    ) -> tuple[TopDownloader, ...]:
        # Python slicing semantics of the reference: a negative ``top`` drops from the end.
        limit = top if top >= 0 else max(unique_downloaders + top, 0)
        if limit == 0:
            return ()
        downloads = _count(r.logical.is_(True)).label("downloads")
        sent = func.sum(r.bytes_sent).label("bytes")
        ranked = (
            select(r.downloader, downloads, sent)
            .where(_allowed_in_period(r, dataset_id, since, until))
            .group_by(r.downloader)
            .order_by(sent.desc(), downloads.desc(), r.downloader)
            .limit(limit)
            .subquery()
        )
        first = download_records.alias("first_record")
        principal = (
            select(first.c.principal_id)
            .where(
                _allowed_in_period(first.c, dataset_id, since, until),
                first.c.downloader == ranked.c.downloader,
            )
            .order_by(first.c.started_at, first.c.id)
            .limit(1)
            .scalar_subquery()
        )
        statement = select(ranked.c.downloader, ranked.c.downloads, ranked.c.bytes, principal)
        statement = statement.order_by(
            ranked.c.bytes.desc(), ranked.c.downloads.desc(), ranked.c.downloader
        )
        return tuple(
            TopDownloader(
                downloader=downloader, principal_id=principal_id, downloads=int(n), bytes=int(b)
            )
            for downloader, n, b, principal_id in (await conn.execute(statement)).all()
        )


def _allowed_in_period(
    columns: Any, dataset_id: str, since: datetime, until: datetime
) -> ColumnElement[bool]:
    return and_(
        columns.dataset_id == dataset_id,
        columns.started_at >= since,
        columns.started_at < until,
        columns.status != DownloadStatus.DENIED.value,
    )
