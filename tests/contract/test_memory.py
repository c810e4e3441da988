"""The contract suites and agreement machines run on the in-memory adapters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from datadl.adapters.memory import (
    MemoryAuditLog,
    MemoryBlobStore,
    MemoryCache,
    MemoryCatalog,
    MemoryUsageStore,
)
from datadl.domain.errors import Conflict, NotFound
from datadl.ports import AuditLog, BlobStore, Cache, Catalog, UsageStore
from datadl.testing import (
    AuditLogContract,
    BlobStoreContract,
    CacheContract,
    CatalogContract,
    UsageStoreContract,
    catalog_agreement,
    usage_store_agreement,
)
from datadl.testing.builders import (
    collect,
    dataset,
    grant,
    organization,
    stream,
    token_claims,
    user,
    version_of,
)
from datadl.testing.cache import Advance

AGREEMENT = settings(max_examples=30, stateful_step_count=30, deadline=None)


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryCatalog(CatalogContract):
    """MemoryCatalog keeps the Catalog contract."""

    @pytest.fixture
    def catalog(self) -> Catalog:
        return MemoryCatalog()

    async def test_memory_specific_choices(self) -> None:
        """Grant ids are unique, unknown counters are ignored, and purging drops tokens."""
        catalog = MemoryCatalog()
        await catalog.add_organization(organization("o1"))
        await catalog.add_user(user("u1"))
        for dataset_id in ("d1", "d2"):
            ds = dataset(dataset_id, organization_id="o1", owner_id="u1")
            await catalog.add_dataset(ds, version_of(ds))
        await catalog.add_grant(grant("g1", "d1", user_id="u1"))
        with pytest.raises(Conflict):
            await catalog.add_grant(grant("g1", "d2", user_id="u1"))
        assert list(await catalog.list_grants("d2")) == []
        await catalog.increment_download_count("nope")
        await catalog.add_token(token_claims("t1", "d1"))
        await catalog.add_token(token_claims("t2", "d2"))
        await catalog.purge_dataset("d1")
        with pytest.raises(NotFound):
            await catalog.get_token("t1")
        assert (await catalog.get_token("t2")).dataset_id == "d2"

    async def test_mismatched_version_is_refused(self) -> None:
        """A version of another dataset is a programming error."""
        catalog = MemoryCatalog()
        ds = dataset("d1", organization_id="o1", owner_id="u1")
        other = dataset("d2", organization_id="o1", owner_id="u1")
        with pytest.raises(ValueError, match="another dataset"):
            await catalog.add_dataset(ds, version_of(other))


class TestMemoryAuditLog(AuditLogContract):
    """MemoryAuditLog keeps the AuditLog contract."""

    @pytest.fixture
    def audit_log(self) -> AuditLog:
        return MemoryAuditLog()


class TestMemoryUsageStore(UsageStoreContract):
    """MemoryUsageStore keeps the UsageStore contract."""

    @pytest.fixture
    def usage_store(self) -> UsageStore:
        return MemoryUsageStore()


class TestMemoryCache(CacheContract):
    """MemoryCache keeps the Cache contract on a fake clock."""

    @pytest.fixture
    def clock(self) -> FakeMonotonic:
        return FakeMonotonic()

    @pytest.fixture
    def cache(self, clock: FakeMonotonic) -> Cache:
        return MemoryCache(clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeMonotonic) -> Advance:
        async def advance(seconds: float) -> None:
            clock.now += seconds

        return advance

    async def test_least_recently_used_entry_is_evicted(self) -> None:
        """Past max_entries the entry neither read nor written for longest goes first."""
        cache = MemoryCache(max_entries=3)
        for key in ("a", "b", "c"):
            await cache.set(key, key.encode())
        assert await cache.get("a") == b"a"
        await cache.set("d", b"d")
        assert await cache.get("b") is None
        assert [await cache.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
        assert len(cache) == 3

    async def test_expiry_is_exact_on_the_clock(self, clock: FakeMonotonic) -> None:
        """An entry reads until just before its deadline and not at it."""
        cache = MemoryCache(clock=clock)
        await cache.set("k", b"v", ttl_seconds=10)
        clock.now += 9.999
        assert await cache.get("k") == b"v"
        clock.now += 0.001
        assert await cache.get("k") is None

    def test_max_entries_must_be_positive(self) -> None:
        """A cache that could hold nothing is refused."""
        with pytest.raises(ValueError, match="max_entries"):
            MemoryCache(max_entries=0)


class TestMemoryBlobStore(BlobStoreContract):
    """MemoryBlobStore keeps the BlobStore contract."""

    read_chunk_limit = 64 * 1024

    @pytest.fixture
    def blob_store(self) -> BlobStore:
        return MemoryBlobStore()

    async def test_chunk_size_and_facts(self) -> None:
        """Reads follow chunk_size; stat reports the clock's time and the quoted SHA-256."""
        when = datetime(2024, 5, 1, tzinfo=UTC)
        store = MemoryBlobStore(chunk_size=4, clock=lambda: when)
        stored = await store.write("k", stream(b"0123456789"))
        assert [c async for c in store.read("k", 1, 9)] == [b"1234", b"5678"]
        assert [c async for c in store.read("k")] == [b"0123", b"4567", b"89"]
        stat = await store.stat("k")
        assert (stat.size, stat.modified_at, stat.etag) == (10, when, f'"{stored.sha256}"')
        assert await store.presigned_url("k", 60) is None

    async def test_modified_time_defaults_to_now(self) -> None:
        """Without a clock, the modification time is the current UTC time."""
        store = MemoryBlobStore()
        before = datetime.now(UTC)
        await store.write("k", stream(b"x"))
        modified = (await store.stat("k")).modified_at
        assert modified is not None
        assert before - timedelta(seconds=1) <= modified <= datetime.now(UTC)

    async def test_negative_ranges_are_refused(self) -> None:
        """A negative start or end is a programming error, not a clamp."""
        store = MemoryBlobStore()
        await store.write("k", stream(b"abc"))
        with pytest.raises(ValueError, match="negative"):
            await collect(store.read("k", -1))
        with pytest.raises(ValueError, match="negative"):
            await collect(store.read("k", 0, -1))


def test_memory_usage_stores_agree() -> None:
    """Two memory usage stores answer the same random operations identically."""
    machine = usage_store_agreement(MemoryUsageStore, MemoryUsageStore)
    run_state_machine_as_test(machine, settings=AGREEMENT)


def test_memory_catalogs_agree() -> None:
    """Two memory catalogues answer the same random operations identically."""
    run_state_machine_as_test(catalog_agreement(MemoryCatalog, MemoryCatalog), settings=AGREEMENT)
