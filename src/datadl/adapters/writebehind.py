"""An audit log that writes behind the response: records are saved in batches.

A download writes its record twice (``started`` before the first byte, the final state
after the last); over SQLite each write is a transaction of its own, and for a short
download (a 64 KiB range) the two were as costly as everything else together.
``BufferedAuditLog`` keeps the latest state of each record in memory and saves what
has gathered every ``interval`` seconds in one transaction (``AuditLog.save``), so a
range's two writes become one row of a shared batch.

Guarantees and their limits:

- Reads of this process see every record at once: ``get`` answers from the buffer, and
  ``history``, ``analytics`` and the purges save the buffer first.
- ``aclose()`` saves everything still buffered; the server calls it on shutdown.
- A failed save keeps the records and is retried, backing off to ``MAX_RETRY_DELAY``
  (``Unavailable``: the database is away). Any other error is a record the store will
  never take: the batch is then saved record by record and a record that still fails is
  logged (``audit_record_dropped``, with its id and the error) and dropped, so that one
  bad record cannot hold back every later one.
- At most ``max_pending`` records wait: a new record past it saves the buffer first and
  is refused (``Unavailable``) if that fails, so memory stays bounded however long the
  database is away, and the caller feels the outage.
- What a process killed outright (SIGKILL, power loss) had buffered is lost: at most
  ``interval`` seconds of records. Other processes see a record ``interval`` seconds late.

``append`` and ``update`` check neither a duplicate nor a missing id (ids come from the
entropy port; see the ``save`` port method). docs/decisions.md has the reasoning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime

import structlog

from datadl.domain.accounting import Analytics, DownloadRecord
from datadl.domain.errors import Unavailable
from datadl.ports.audit import AuditLog, HistoryQuery

#: Seconds between saves of the buffer.
INTERVAL = 0.25
#: Records kept at most before a write waits for a save.
MAX_PENDING = 5_000
#: The longest wait between two attempts while saves fail.
MAX_RETRY_DELAY = 30.0

_log = structlog.get_logger("datadl.audit")


class BufferedAuditLog:
    """An ``AuditLog`` over another one that saves records in batches, behind the caller."""

    def __init__(
        self,
        inner: AuditLog,
        *,
        interval: float = INTERVAL,
        max_pending: int = MAX_PENDING,
        max_retry_delay: float = MAX_RETRY_DELAY,
    ) -> None:
        if interval <= 0:
            raise ValueError("a write-behind audit log needs a positive interval")
        self._inner = inner
        self._interval = interval
        self._max_pending = max_pending
        self._max_retry_delay = max_retry_delay
        # The latest state of each record not yet handed to the inner log, and those of
        # the save in progress.
        self._pending: dict[str, DownloadRecord] = {}
        self._saving: dict[str, DownloadRecord] = {}
        self._turn = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def inner(self) -> AuditLog:
        """The log the records end up in."""
        return self._inner

    @property
    def pending(self) -> int:
        """How many records wait to be saved."""
        return len(self._pending) + len(self._saving)

    # --- writes ------------------------------------------------------------------------------

    async def append(self, record: DownloadRecord) -> None:
        await self._put(record)

    async def update(self, record: DownloadRecord) -> None:
        await self._put(record)

    async def save(self, records: Sequence[DownloadRecord]) -> None:
        for record in records:
            await self._put(record)

    async def _put(self, record: DownloadRecord) -> None:
        if self._closed:
            # Written through, but after anything still buffered, so that an older state
            # saved late never replaces this one.
            self._pending[record.id] = record
            await self.flush()
            return
        if record.id not in self._pending and len(self._pending) >= self._max_pending:
            # Full: save first, and refuse a new record (Unavailable) if that fails, so
            # memory stays bounded however long the store is away. A newer state of a
            # record already buffered replaces it and takes no room.
            await self.flush()
        self._pending[record.id] = record
        loop = asyncio.get_running_loop()
        # A task left by an event loop that has ended never runs again: start one here.
        if self._task is None or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="datadl-audit-write-behind")

    async def flush(self) -> None:
        """Save what is buffered when called; ``Unavailable`` (records kept) if the store
        is away. Records buffered meanwhile are left to the next save, so a steady stream
        of writes cannot keep a caller waiting."""
        async with self._turn:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            self._saving = batch
            try:
                await self._save(batch)
            except BaseException:
                # Newer states that arrived during the save win over the batch's.
                self._pending = {**batch, **self._pending}
                raise
            finally:
                self._saving = {}

    async def _save(self, batch: dict[str, DownloadRecord]) -> None:
        records = list(batch.values())
        try:
            await self._inner.save(records)
            return
        except Unavailable:
            raise
        except Exception as exc:
            # Some record the store refuses: find it by saving them one by one.
            _log.warning("audit_batch_refused", records=len(records), error=type(exc).__name__)
        for record in records:
            try:
                await self._inner.save([record])
            except Unavailable:
                raise
            except Exception as exc:
                batch.pop(record.id, None)
                _log.error(
                    "audit_record_dropped",
                    record_id=record.id,
                    dataset_id=record.dataset_id,
                    status=record.status.value,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                batch.pop(record.id, None)

    async def _run(self) -> None:
        me = asyncio.current_task()
        delay = self._interval
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.flush()
                except Unavailable as exc:
                    delay = min(max(delay * 2, 1.0), self._max_retry_delay)
                    _log.warning(
                        "audit_save_failed",
                        error=str(exc),
                        pending=self.pending,
                        retry_in_seconds=delay,
                    )
                    continue
                delay = self._interval
                if not self._pending:
                    return
        finally:
            if self._task is me:
                self._task = None

    async def aclose(self) -> None:
        """Save what is buffered and write through from now on."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    # --- reads -------------------------------------------------------------------------------

    async def get(self, record_id: str) -> DownloadRecord:
        found = self._pending.get(record_id) or self._saving.get(record_id)
        if found is not None:
            return found
        return await self._inner.get(record_id)

    async def history(self, query: HistoryQuery) -> Sequence[DownloadRecord]:
        await self.flush()
        return await self._inner.history(query)

    async def analytics(
        self, dataset_id: str, *, since: datetime, until: datetime, top: int = 10
    ) -> Analytics:
        await self.flush()
        return await self._inner.analytics(dataset_id, since=since, until=until, top=top)

    async def purge(self, organization_id: str, before: datetime) -> int:
        await self.flush()
        return await self._inner.purge(organization_id, before)

    async def purge_dataset(self, dataset_id: str, before: datetime) -> int:
        await self.flush()
        return await self._inner.purge_dataset(dataset_id, before)
