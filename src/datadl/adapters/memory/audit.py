"""An in-process AuditLog: download records, their history and analytics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from datadl.domain.accounting import (
    Analytics,
    DownloadRecord,
    DownloadStatus,
    analytics_from_records,
)
from datadl.domain.errors import Conflict, NotFound
from datadl.ports.audit import HistoryQuery


def _finished_before(record: DownloadRecord, before: datetime) -> bool:
    # A record still ``started`` is never purged, whatever its finished_at says.
    return (
        record.status is not DownloadStatus.STARTED
        and record.finished_at is not None
        and record.finished_at < before
    )


class MemoryAuditLog:
    """The AuditLog port held in a dictionary of one process.

    Purging removes records that finished strictly before the cut-off; a record without
    ``finished_at`` has not finished.
    """

    def __init__(self) -> None:
        self._records: dict[str, DownloadRecord] = {}

    async def append(self, record: DownloadRecord) -> None:
        if record.id in self._records:
            raise Conflict(f"A download record with id {record.id!r} exists.")
        self._records[record.id] = record

    async def update(self, record: DownloadRecord) -> None:
        if record.id not in self._records:
            raise NotFound(f"No download record {record.id!r}.")
        self._records[record.id] = record

    async def save(self, records: Sequence[DownloadRecord]) -> None:
        for record in records:
            self._records[record.id] = record

    async def get(self, record_id: str) -> DownloadRecord:
        try:
            return self._records[record_id]
        except KeyError:
            raise NotFound(f"No download record {record_id!r}.") from None

    async def history(self, query: HistoryQuery) -> Sequence[DownloadRecord]:
        if query.limit <= 0:
            return []
        found = [
            r
            for r in self._records.values()
            if (query.dataset_id is None or r.dataset_id == query.dataset_id)
            and (query.principal_id is None or r.principal_id == query.principal_id)
            and (query.status is None or r.status is query.status)
            and (query.before is None or (r.started_at, r.id) < query.before)
        ]
        found.sort(key=lambda r: (r.started_at, r.id), reverse=True)
        return found[: query.limit]

    async def analytics(
        self, dataset_id: str, *, since: datetime, until: datetime, top: int = 10
    ) -> Analytics:
        records = [r for r in self._records.values() if r.dataset_id == dataset_id]
        # The reference takes a downloader's principal from its first record: oldest first.
        records.sort(key=lambda r: (r.started_at, r.id))
        return analytics_from_records(records, since=since, until=until, top=top)

    def _remove(self, doomed: Callable[[DownloadRecord], bool]) -> int:
        ids = [r.id for r in self._records.values() if doomed(r)]
        for record_id in ids:
            del self._records[record_id]
        return len(ids)

    async def purge(self, organization_id: str, before: datetime) -> int:
        return self._remove(
            lambda r: r.organization_id == organization_id and _finished_before(r, before)
        )

    async def purge_dataset(self, dataset_id: str, before: datetime) -> int:
        return self._remove(lambda r: r.dataset_id == dataset_id and _finished_before(r, before))
