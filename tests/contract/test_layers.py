"""The read cache over the catalogue and the write buffer over the audit log.

Each keeps its port's contract (run here over the memory adapters), and each has promises
of its own: what a cache may answer from memory and when it must ask again; when a
buffered record reaches the log, and what happens when the log refuses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import attrs
import pytest
from structlog.testing import capture_logs

from datadl.adapters.memory import MemoryAuditLog, MemoryCatalog
from datadl.adapters.readcache import CachedCatalog
from datadl.adapters.writebehind import BufferedAuditLog
from datadl.domain.accounting import DownloadRecord, DownloadStatus
from datadl.domain.errors import NotFound, StaleWrite, Unavailable
from datadl.domain.model import Visibility
from datadl.domain.policy import DownloadPolicy
from datadl.ports import AuditLog, Catalog
from datadl.ports.audit import HistoryQuery
from datadl.testing import AuditLogContract, CatalogContract
from datadl.testing.builders import at, dataset, grant, organization, record, user, version_of
from tests.contract.test_memory import FakeMonotonic

# --- the read cache ---------------------------------------------------------------------------


class TestCachedCatalogContract(CatalogContract):
    """A cached catalogue keeps the Catalog contract: its own writes are seen at once."""

    @pytest.fixture
    def catalog(self) -> Catalog:
        return CachedCatalog(MemoryCatalog(), ttl=60)


class CountingCatalog(MemoryCatalog):
    """A memory catalogue that counts the lookups reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_dataset(self, dataset_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().get_dataset(dataset_id)


async def _seeded(inner: MemoryCatalog) -> None:
    await inner.add_organization(organization("o1"))
    await inner.add_user(user("u1"))
    ds = dataset("d1", organization_id="o1", owner_id="u1")
    await inner.add_dataset(ds, version_of(ds))


async def test_lookups_are_answered_from_memory_until_the_ttl_passes() -> None:
    """Within the ttl a lookup does not reach the catalogue; after it, it does again."""
    inner = CountingCatalog()
    await _seeded(inner)
    timer = FakeMonotonic()
    cached = CachedCatalog(inner, ttl=2, timer=timer)
    first = await cached.get_dataset("d1")
    assert await cached.get_dataset("d1") == first
    assert inner.reads == 1
    timer.now += 2.5
    await cached.get_dataset("d1")
    assert inner.reads == 2


async def test_another_process_change_is_seen_within_the_ttl() -> None:
    """A change made behind the cache (another process) shows once the entry expires."""
    inner = MemoryCatalog()
    await _seeded(inner)
    timer = FakeMonotonic()
    cached = CachedCatalog(inner, ttl=2, timer=timer)
    before = await cached.get_dataset("d1")
    await inner.update_dataset(attrs.evolve(before, visibility=Visibility.PRIVATE))
    assert (await cached.get_dataset("d1")).visibility is before.visibility
    timer.now += 2.01
    assert (await cached.get_dataset("d1")).visibility is Visibility.PRIVATE


async def test_every_write_through_the_cache_empties_it() -> None:
    """A grant, a policy or a dataset change made here is seen by the next lookup."""
    inner = MemoryCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    assert list(await cached.list_grants("d1")) == []
    assert await cached.get_policy("o1") is None
    before = await cached.get_dataset("d1")
    await cached.add_grant(grant("g1", "d1", user_id="u1"))
    await cached.set_policy("o1", DownloadPolicy(allow_anonymous=False))
    await cached.update_dataset(attrs.evolve(before, title="Changed"), expected=before)
    assert [g.id for g in await cached.list_grants("d1")] == ["g1"]
    assert await cached.get_policy("o1") == DownloadPolicy(allow_anonymous=False)
    assert (await cached.get_dataset("d1")).title == "Changed"


async def test_a_failed_write_empties_the_cache_too() -> None:
    """A stale compare-and-set means the cache was behind: the retry reads afresh."""
    inner = MemoryCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    stale = await cached.get_dataset("d1")
    await inner.update_dataset(attrs.evolve(stale, title="Elsewhere"))
    with pytest.raises(StaleWrite):
        await cached.update_dataset(attrs.evolve(stale, title="Here"), expected=stale)
    assert (await cached.get_dataset("d1")).title == "Elsewhere"


async def test_a_lookup_that_races_a_write_is_not_remembered() -> None:
    """An answer read before a write finished is handed out once, never kept."""
    inner = MemoryCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    started, release = asyncio.Event(), asyncio.Event()
    real_get = inner.get_dataset

    async def slow_get(dataset_id: str):  # type: ignore[no-untyped-def]
        found = await real_get(dataset_id)
        started.set()
        await release.wait()
        return found

    inner.get_dataset = slow_get  # type: ignore[method-assign]
    reading = asyncio.create_task(cached.get_dataset("d1"))
    await started.wait()
    current = await real_get("d1")
    await cached.update_dataset(attrs.evolve(current, title="New"), expected=current)
    release.set()
    assert (await reading).title == current.title
    inner.get_dataset = real_get  # type: ignore[method-assign]
    assert (await cached.get_dataset("d1")).title == "New"


async def test_misses_are_not_remembered_and_answers_cannot_be_changed() -> None:
    """A missing dataset is asked for again; a cached list handed out is a copy."""
    inner = MemoryCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    with pytest.raises(NotFound):
        await cached.get_dataset("d2")
    ds = dataset("d2", organization_id="o1", owner_id="u1")
    await inner.add_dataset(ds, version_of(ds))
    assert (await cached.get_dataset("d2")).id == "d2"
    grants = await cached.list_grants("d1")
    assert isinstance(grants, list)
    grants.append(grant("g9", "d1", user_id="u1"))
    assert list(await cached.list_grants("d1")) == []


async def test_a_download_count_drops_only_its_dataset() -> None:
    """Counting a download changes nothing a decision reads: only the dataset is re-read."""
    inner = CountingCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    await cached.get_dataset("d1")
    await cached.get_policy("o1")
    await cached.set_policy("o1", DownloadPolicy(allow_anonymous=False))
    assert await cached.get_policy("o1") == DownloadPolicy(allow_anonymous=False)
    await inner.set_policy("o1", DownloadPolicy())  # behind the cache
    reads = inner.reads
    await cached.increment_download_count("d1")
    assert (await cached.get_dataset("d1")).download_count == 1
    assert inner.reads == reads + 1
    assert await cached.get_policy("o1") == DownloadPolicy(allow_anonymous=False)


async def test_the_fresh_view_reads_through_and_its_writes_empty_the_cache() -> None:
    """Reads that decide lasting writes take the fresh view; it shares the cache's writes."""
    inner = CountingCatalog()
    await _seeded(inner)
    cached = CachedCatalog(inner, ttl=60, timer=FakeMonotonic())
    fresh = cached.fresh()
    assert fresh.inner is inner and not fresh.reads_cached
    before = await cached.get_dataset("d1")
    await fresh.get_dataset("d1")
    await fresh.get_dataset("d1")
    assert inner.reads == 3
    await fresh.update_dataset(attrs.evolve(before, title="Fresh"), expected=before)
    assert (await cached.get_dataset("d1")).title == "Fresh"
    assert inner.reads == 4


class TestFreshViewContract(CatalogContract):
    """The fresh view keeps the Catalog contract too."""

    @pytest.fixture
    def catalog(self) -> Catalog:
        return CachedCatalog(MemoryCatalog(), ttl=60).fresh()


def test_a_cache_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="positive ttl"):
        CachedCatalog(MemoryCatalog(), ttl=0)


# --- the write buffer -------------------------------------------------------------------------


class TestBufferedAuditLogContract(AuditLogContract):
    """A buffered log keeps the AuditLog contract, except the checks it cannot make."""

    @pytest.fixture
    async def audit_log(self) -> AsyncIterator[AuditLog]:
        log = BufferedAuditLog(MemoryAuditLog(), interval=0.01)
        yield log
        await log.aclose()

    async def test_append_of_a_known_id_conflicts(self, audit_log: AuditLog) -> None:
        """Not promised: the buffer cannot see the log's ids; the later state wins."""
        await audit_log.append(record("r1"))
        await audit_log.append(record("r1", bytes_sent=99))
        assert (await audit_log.get("r1")).bytes_sent == 99

    async def test_update_replaces_the_record(self, audit_log: AuditLog) -> None:
        """Updates replace the buffered state; an unknown id is stored, not refused."""
        started = record("r1", status=DownloadStatus.STARTED)
        await audit_log.append(started)
        done = started.finished(DownloadStatus.COMPLETED, bytes_sent=20, now=at(5))
        await audit_log.update(done)
        assert await audit_log.get("r1") == done


class RecordingLog(MemoryAuditLog):
    """A memory log that records each save and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[list[str]] = []
        self.down = False
        self.refused: set[str] = set()

    async def save(self, records: Sequence[DownloadRecord]) -> None:
        if self.down:
            raise Unavailable("the database is away")
        if any(r.id in self.refused for r in records):
            raise ValueError("a record this store cannot take")
        self.saves.append([r.id for r in records])
        await super().save(records)


async def test_a_started_and_finished_record_is_saved_once_with_its_last_state() -> None:
    """The two writes of a short download become one row of one batch."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=0.05)
    started = record("r1", status=DownloadStatus.STARTED)
    await log.append(started)
    await log.append(record("r2"))
    done = started.finished(DownloadStatus.COMPLETED, bytes_sent=5, now=at(1))
    await log.update(done)
    assert inner.saves == []
    assert await log.get("r1") == done
    await asyncio.sleep(0.2)
    assert inner.saves == [["r1", "r2"]]
    assert await inner.get("r1") == done
    await log.aclose()


async def test_reads_of_history_and_analytics_see_buffered_records() -> None:
    """history, analytics and the purges save the buffer before they ask the log."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=60)
    await log.append(record("r1", "d1"))
    page = await log.history(HistoryQuery(dataset_id="d1"))
    assert [r.id for r in page] == ["r1"]
    await log.aclose()


async def test_records_survive_an_unavailable_log_and_are_saved_when_it_returns() -> None:
    """A failed save keeps the records, logs a warning and tries again later."""
    inner = RecordingLog()
    inner.down = True
    log = BufferedAuditLog(inner, interval=0.01, max_retry_delay=0.05)
    with capture_logs() as logs:
        await log.append(record("r1"))
        await asyncio.sleep(0.1)
        assert log.pending == 1
        assert any(e["event"] == "audit_save_failed" for e in logs)
        inner.down = False
        await asyncio.sleep(0.3)
    assert log.pending == 0
    assert (await inner.get("r1")).id == "r1"
    await log.aclose()


async def test_a_record_the_log_refuses_is_logged_and_dropped_alone() -> None:
    """One bad record does not hold back the others in its batch."""
    inner = RecordingLog()
    inner.refused = {"bad"}
    log = BufferedAuditLog(inner, interval=60)
    await log.append(record("good"))
    await log.append(record("bad"))
    with capture_logs() as logs:
        await log.flush()
    assert (await inner.get("good")).id == "good"
    with pytest.raises(NotFound):
        await inner.get("bad")
    dropped = [e for e in logs if e["event"] == "audit_record_dropped"]
    assert [e["record_id"] for e in dropped] == ["bad"]
    assert log.pending == 0
    await log.aclose()


async def test_a_full_buffer_saves_first_and_refuses_new_records_while_the_log_is_away() -> None:
    """Past max_pending a new record waits for a save; if the save fails it is refused,
    so memory stays bounded; a newer state of a buffered record always takes its place."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=60, max_pending=3)
    for i in range(3):
        await log.append(record(f"r{i}"))
    assert inner.saves == []
    await log.append(record("r3"))
    assert inner.saves == [["r0", "r1", "r2"]]
    inner.down = True
    await log.append(record("r4"))
    await log.append(record("r5"))
    for _ in range(3):
        with pytest.raises(Unavailable):
            await log.append(record("r6"))
    assert log.pending == 3
    done = record("r3", bytes_sent=42)
    await log.update(done)
    assert log.pending == 3
    inner.down = False
    await log.aclose()
    for i in range(6):
        assert (await inner.get(f"r{i}")).id == f"r{i}"
    assert await inner.get("r3") == done
    with pytest.raises(NotFound):
        await inner.get("r6")


async def test_a_steady_stream_of_writes_cannot_keep_a_reader_waiting() -> None:
    """history() saves what was buffered when it was called, not everything ever after."""
    inner = RecordingLog()
    real_save = inner.save

    async def io_save(records: Sequence[DownloadRecord]) -> None:
        await asyncio.sleep(0.001)  # a save takes time, as a database's does
        await real_save(records)

    inner.save = io_save  # type: ignore[method-assign]
    log = BufferedAuditLog(inner, interval=60)
    await log.append(record("first", "d1"))
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await log.append(record(f"w{i}", "d2"))
            i += 1
            await asyncio.sleep(0)

    writing = asyncio.create_task(writer())
    try:
        async with asyncio.timeout(5):
            page = await log.history(HistoryQuery(dataset_id="d1"))
    finally:
        stop.set()
        await writing
    assert [r.id for r in page] == ["first"]
    await log.aclose()


async def test_writes_after_close_never_lose_to_an_older_buffered_state() -> None:
    """A record written while closing lands after the buffered batch, never before it."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=60)
    started = record("r1", status=DownloadStatus.STARTED)
    await log.append(started)
    real_save = inner.save
    gate = asyncio.Event()

    calls = 0

    async def slow_save(records: Sequence[DownloadRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the buffered batch is slow to save; later saves are quick
            await gate.wait()
        await real_save(records)

    inner.save = slow_save  # type: ignore[method-assign]
    closing = asyncio.create_task(log.aclose())
    await asyncio.sleep(0.01)
    done = started.finished(DownloadStatus.COMPLETED, bytes_sent=9, now=at(1))
    finishing = asyncio.create_task(log.update(done))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(closing, finishing)
    assert await inner.get("r1") == done


async def test_close_saves_everything_and_later_writes_go_straight_through() -> None:
    """aclose leaves nothing behind; after it nothing is buffered any more."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=60)
    await log.append(record("r1"))
    await log.aclose()
    assert inner.saves == [["r1"]]
    await log.append(record("r2"))
    assert inner.saves == [["r1"], ["r2"]]
    assert log.pending == 0


def _id(rec: DownloadRecord) -> str:
    return rec.id


def test_a_buffer_used_from_a_second_event_loop_still_saves() -> None:
    """A saver task left behind by an ended loop does not stop the next loop's saves."""
    inner = RecordingLog()
    log = BufferedAuditLog(inner, interval=0.01)

    async def write(record_id: str, wait: float) -> None:
        await log.append(record(record_id))
        await asyncio.sleep(wait)

    ended = asyncio.new_event_loop()
    ended.run_until_complete(write("r1", 0))
    ended.close()  # closed with its saver still pending, never to run
    asyncio.run(write("r2", 0.2))
    assert sorted(i for ids in inner.saves for i in ids) == ["r1", "r2"]
