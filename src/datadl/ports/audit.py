"""The AuditLog port: one DownloadRecord per download attempt, history and analytics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from datadl.domain.accounting import Analytics, DownloadRecord, DownloadStatus


@attrs.frozen
class HistoryQuery:
    """One page of records, newest first: ordered by (``started_at``, ``id``) descending.

    Exactly one of ``dataset_id`` and ``principal_id`` is set. ``before`` is the
    (started_at, id) of the last record of the previous page.
    """

    dataset_id: str | None = None
    principal_id: str | None = None
    status: DownloadStatus | None = None
    limit: int = 50
    before: tuple[datetime, str] | None = None

    def __attrs_post_init__(self) -> None:
        if (self.dataset_id is None) == (self.principal_id is None):
            raise ValueError("a history query names one dataset or one principal")


class AuditLog(Protocol):
    """Append-mostly store of download records.

    Every method may raise ``Unavailable`` when the store cannot be reached.
    """

    async def append(self, record: DownloadRecord) -> None:
        """Store a new record; ``Conflict`` if its id exists."""
        ...

    async def update(self, record: DownloadRecord) -> None:
        """Replace a record with its progressed or finished state; ``NotFound`` if absent."""
        ...

    async def save(self, records: Sequence[DownloadRecord]) -> None:
        """Store every record as given, all or nothing: new ids are added, known ones replaced.

        The batch form of ``append`` and ``update`` for a writer that buffers records
        (``adapters.writebehind``); it checks neither a conflict nor an absence. A record
        appears at most once in ``records``.
        """
        ...

    async def get(self, record_id: str) -> DownloadRecord:
        """One record; ``NotFound`` if absent."""
        ...

    async def history(self, query: HistoryQuery) -> Sequence[DownloadRecord]:
        """Up to ``query.limit`` records matching the query, newest first."""
        ...

    async def analytics(
        self, dataset_id: str, *, since: datetime, until: datetime, top: int = 10
    ) -> Analytics:
        """Aggregates of the dataset's records started in [since, until).

        Must equal ``domain.accounting.analytics_from_records`` over those records.
        """
        ...

    async def purge(self, organization_id: str, before: datetime) -> int:
        """Remove the organisation's records that finished before ``before``; their count.

        Records still ``started`` are kept whatever their age.
        """
        ...

    async def purge_dataset(self, dataset_id: str, before: datetime) -> int:
        """Remove one dataset's finished records older than ``before``; their count."""
        ...
