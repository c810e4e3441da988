"""The AuditLog contract suite: subclass ``AuditLogContract`` and provide ``audit_log``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

import attrs
import pytest

from datadl.domain.accounting import DownloadRecord, DownloadStatus, analytics_from_records
from datadl.domain.errors import Conflict, NotFound
from datadl.ports.audit import AuditLog, HistoryQuery
from datadl.testing.builders import T0, at, record

_FINAL = (
    DownloadStatus.COMPLETED,
    DownloadStatus.ABORTED,
    DownloadStatus.FAILED,
    DownloadStatus.DENIED,
)
_DOWNLOADERS = (("user:u1", "u1"), ("user:u2", "u2"), ("user:u3", "u3"), ("anon:a", None))


def _random_records(seed: int, count: int = 60) -> list[DownloadRecord]:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    records = []
    for i in range(count):
        status = rng.choice((*_FINAL, DownloadStatus.STARTED))
        downloader, principal = rng.choice(_DOWNLOADERS)
        # Start times cluster around the window's edges and repeat, so ties and bounds occur.
        started = rng.choice(
            (
                at(0),
                at(-1),
                at(3 * 86_400),
                at(3 * 86_400 - 1),
                at(rng.randrange(-2 * 86_400, 5 * 86_400)),
                at(rng.randrange(0, 3 * 86_400)),
            )
        )
        records.append(
            record(
                f"r{i:03d}",
                rng.choice(("d1", "d1", "d1", "d2")),
                status=status,
                started_at=started,
                principal_id=principal,
                downloader=downloader,
                format=rng.choice(("csv", "parquet", "json")),
                bytes_sent=0 if status is DownloadStatus.DENIED else rng.randrange(0, 5000),
                logical=status is not DownloadStatus.DENIED and rng.random() < 0.6,
                denial_code=(
                    rng.choice(("forbidden", "quota_exceeded", "rate_limited"))
                    if status is DownloadStatus.DENIED
                    else None
                ),
            )
        )
    return records


async def _all_pages(audit_log: AuditLog, query: HistoryQuery) -> list[DownloadRecord]:
    found: list[DownloadRecord] = []
    while True:
        page = await audit_log.history(query)
        assert len(page) <= query.limit
        # A page that repeats an earlier record would make the walk endless.
        assert not {r.id for r in page} & {r.id for r in found}, "a page repeats a record"
        found.extend(page)
        if len(page) < query.limit:
            return found
        query = attrs.evolve(query, before=(page[-1].started_at, page[-1].id))


def _newest_first(records: Sequence[DownloadRecord]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)]


class AuditLogContract:
    """Every promise of the AuditLog port, for any adapter.

    Subclass it as ``TestMyAuditLog(AuditLogContract)`` and provide an ``audit_log``
    fixture that yields an empty log.
    """

    async def test_record_round_trips(self, audit_log: AuditLog) -> None:
        """An appended record comes back equal; unknown ids are NotFound."""
        rec = record("r1", status=DownloadStatus.STARTED, principal_id="u1", bytes_sent=0)
        await audit_log.append(rec)
        assert await audit_log.get("r1") == rec
        with pytest.raises(NotFound):
            await audit_log.get("r2")

    async def test_append_of_a_known_id_conflicts(self, audit_log: AuditLog) -> None:
        """Appending an id twice is a Conflict and keeps the first record."""
        rec = record("r1")
        await audit_log.append(rec)
        with pytest.raises(Conflict):
            await audit_log.append(record("r1", bytes_sent=99))
        assert await audit_log.get("r1") == rec

    async def test_update_replaces_the_record(self, audit_log: AuditLog) -> None:
        """Progress and finishing are stored by update; updating an unknown id is NotFound."""
        started = record("r1", status=DownloadStatus.STARTED)
        await audit_log.append(started)
        progressed = started.progressed(10)
        await audit_log.update(progressed)
        assert await audit_log.get("r1") == progressed
        done = progressed.finished(DownloadStatus.COMPLETED, bytes_sent=20, now=at(5))
        await audit_log.update(done)
        assert await audit_log.get("r1") == done
        with pytest.raises(NotFound):
            await audit_log.update(record("r2"))
        with pytest.raises(NotFound):
            await audit_log.get("r2")

    async def test_save_adds_new_records_and_replaces_known_ones(self, audit_log: AuditLog) -> None:
        """One save inserts unknown ids and replaces known ones with their given state."""
        started = record("r1", status=DownloadStatus.STARTED, bytes_sent=0)
        await audit_log.append(started)
        done = started.finished(DownloadStatus.COMPLETED, bytes_sent=30, now=at(7))
        fresh = record("r2", "d2", status=DownloadStatus.DENIED, denial_code="forbidden")
        await audit_log.save([done, fresh])
        assert await audit_log.get("r1") == done
        assert await audit_log.get("r2") == fresh
        await audit_log.save([])
        assert await audit_log.get("r1") == done

    async def test_save_of_a_large_batch_keeps_every_record(self, audit_log: AuditLog) -> None:
        """A batch larger than one statement's worth of rows is stored whole."""
        batch = [record(f"b{i:04d}", started_at=at(i)) for i in range(1_203)]
        await audit_log.save(batch)
        found = await _all_pages(audit_log, HistoryQuery(dataset_id="d1", limit=500))
        assert [r.id for r in found] == _newest_first(batch)

    async def test_history_pages_newest_first_with_ties(self, audit_log: AuditLog) -> None:
        """Pages ordered by (started_at, id) descending join up with no gap or repeat."""
        seconds = {"a": 5, "b": 5, "c": 5, "d": 1, "e": 9, "f": 9, "g": 0}
        mine = [record(i, "d1", started_at=at(s)) for i, s in seconds.items()]
        for rec in [*mine, record("x", "d2", started_at=at(5))]:
            await audit_log.append(rec)
        expected = _newest_first(mine)
        assert expected == ["f", "e", "c", "b", "a", "d", "g"]
        for limit in (1, 2, 3, 7, 50):
            found = await _all_pages(audit_log, HistoryQuery(dataset_id="d1", limit=limit))
            assert [r.id for r in found] == expected
        page = await audit_log.history(HistoryQuery(dataset_id="d1", limit=2, before=(at(5), "b")))
        assert [r.id for r in page] == ["a", "d"]

    async def test_history_by_principal(self, audit_log: AuditLog) -> None:
        """A principal's history holds its records of every dataset, and no one else's."""
        stored = [
            record("r1", "d1", principal_id="u1", started_at=at(1)),
            record("r2", "d2", principal_id="u1", started_at=at(2)),
            record("r3", "d1", principal_id="u2", started_at=at(3)),
            record("r4", "d3", principal_id="u1", started_at=at(2)),
        ]
        for rec in stored:
            await audit_log.append(rec)
        found = await _all_pages(audit_log, HistoryQuery(principal_id="u1", limit=2))
        assert [r.id for r in found] == ["r4", "r2", "r1"]
        assert list(await audit_log.history(HistoryQuery(principal_id="u9"))) == []

    async def test_history_filters_by_status(self, audit_log: AuditLog) -> None:
        """A status filter keeps only records in that status, still newest first, paged."""
        statuses = [*_FINAL, DownloadStatus.STARTED] * 3
        stored = [
            record(f"r{i}", "d1", status=s, started_at=at(i % 4)) for i, s in enumerate(statuses)
        ]
        for rec in stored:
            await audit_log.append(rec)
        for status in DownloadStatus:
            query = HistoryQuery(dataset_id="d1", status=status, limit=2)
            found = await _all_pages(audit_log, query)
            assert [r.id for r in found] == _newest_first([r for r in stored if r.status is status])

    @pytest.mark.parametrize("seed", range(5))
    async def test_analytics_equal_the_domain_reference(
        self, audit_log: AuditLog, seed: int
    ) -> None:
        """Analytics over [since, until) equal ``analytics_from_records`` over the same records."""
        records = _random_records(seed)
        for rec in records:
            await audit_log.append(rec)
        rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        for rec in rng.sample(records, 10):
            if rec.status is DownloadStatus.STARTED:
                done = rec.finished(
                    DownloadStatus.ABORTED, bytes_sent=rec.bytes_sent + 7, now=at(1)
                )
                await audit_log.update(done)
                records[records.index(rec)] = done
        since, until = T0, T0 + timedelta(days=3)
        for dataset_id in ("d1", "d2"):
            mine = [r for r in records if r.dataset_id == dataset_id]
            for top in (10, 2):
                got = await audit_log.analytics(dataset_id, since=since, until=until, top=top)
                assert got == analytics_from_records(mine, since=since, until=until, top=top)
        assert await audit_log.analytics("d1", since=since, until=until) == analytics_from_records(
            [r for r in records if r.dataset_id == "d1"], since=since, until=until
        )

    async def test_analytics_of_a_quiet_dataset(self, audit_log: AuditLog) -> None:
        """A dataset with no records in the period has zero totals and a zero-filled series."""
        await audit_log.append(record("r1", "d1", started_at=at(-10)))
        since, until = T0, T0 + timedelta(days=2)
        got = await audit_log.analytics("d1", since=since, until=until)
        assert got == analytics_from_records([], since=since, until=until)
        assert got.requests == 0
        assert len(got.per_day) == 3

    async def test_purge_removes_old_finished_records(self, audit_log: AuditLog) -> None:
        """Purge drops the organisation's records finished before the cut-off, none started."""
        cut = at(1000)
        kept = [
            record("started-old", status=DownloadStatus.STARTED, started_at=at(0)),
            record("finished-at-cut", started_at=at(0), finished_at=cut),
            record("finished-late", started_at=at(0), finished_at=at(2000)),
            record("other-org", organization_id="o2", started_at=at(0), finished_at=at(1)),
            attrs.evolve(
                record("started-with-time", status=DownloadStatus.STARTED), finished_at=at(1)
            ),
        ]
        gone = [
            record("completed-old", started_at=at(0), finished_at=at(999)),
            record("denied-old", status=DownloadStatus.DENIED, started_at=at(3)),
            record("failed-other-dataset", "d2", status=DownloadStatus.FAILED, started_at=at(0)),
            record("aborted-old", status=DownloadStatus.ABORTED, started_at=at(9)),
        ]
        for rec in [*kept, *gone]:
            await audit_log.append(rec)
        assert await audit_log.purge("o1", cut) == len(gone)
        for rec in kept:
            assert await audit_log.get(rec.id) == rec
        for rec in gone:
            with pytest.raises(NotFound):
                await audit_log.get(rec.id)
        assert await audit_log.purge("o1", cut) == 0

    async def test_purge_dataset_removes_only_that_dataset(self, audit_log: AuditLog) -> None:
        """Purging one dataset drops its finished old records and keeps every other record."""
        cut = at(1000)
        kept = [
            record("d1-started", "d1", status=DownloadStatus.STARTED, started_at=at(0)),
            record("d1-recent", "d1", started_at=at(1500)),
            record("d1-at-cut", "d1", started_at=at(0), finished_at=cut),
            record("d2-old", "d2", started_at=at(0)),
        ]
        gone = [
            record("d1-old", "d1", started_at=at(0)),
            record("d1-denied", "d1", status=DownloadStatus.DENIED, started_at=at(5)),
            record("d1-o2", "d1", organization_id="o2", started_at=at(5)),
        ]
        for rec in [*kept, *gone]:
            await audit_log.append(rec)
        assert await audit_log.purge_dataset("d1", cut) == len(gone)
        remaining = await _all_pages(audit_log, HistoryQuery(dataset_id="d1", limit=2))
        assert sorted(r.id for r in remaining) == sorted(r.id for r in kept if r.dataset_id == "d1")
        assert await audit_log.get("d2-old") == kept[-1]
        assert await audit_log.purge_dataset("d1", cut) == 0
