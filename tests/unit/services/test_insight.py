"""Metadata and preview through the insight service, on memory adapters and the real engine."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import attrs
import pytest

import datadl
from datadl.adapters.memory import MemoryBlobStore, MemoryCache
from datadl.adapters.system import FixedClock, StaticKeyRing
from datadl.adapters.tables import ArrowTableEngine
from datadl.domain.errors import (
    AnalysisFailed,
    AnalysisPending,
    BadRequest,
    DatadlError,
    StorageUnavailable,
)
from datadl.domain.model import Dataset, DatasetFile, DatasetStatus, FileFormat, Role, Visibility
from datadl.domain.tables import Page, TableProfile
from datadl.domain.tokens import SigningKey
from datadl.ports.tables import ConvertOptions
from datadl.samples import path as sample_path
from datadl.services.datasets import DatasetFacts
from datadl.services.downloads import DownloadAsk
from tests.conftest import World, chunks

PENGUINS = sample_path("penguins.csv").read_bytes()
RAGGED = b"a,b\n1,2\n3,4,5\n6,7\n"


class CountingEngine:
    """The real engine, counting calls; ``gate`` (when set) holds every profile until opened."""

    def __init__(self, inner: ArrowTableEngine) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.previewed: list[DatasetFile] = []
        self.converted: list[tuple[FileFormat, ConvertOptions]] = []
        self.gate: asyncio.Event | None = None

    @property
    def version(self) -> str:
        return self.inner.version

    async def profile(self, file: DatasetFile) -> TableProfile:
        self.calls["profile"] += 1
        if self.gate is not None:
            await self.gate.wait()
        return await self.inner.profile(file)

    async def preview(
        self, file: DatasetFile, *, offset: int, limit: int, columns: Sequence[str] | None = None
    ) -> Page:
        self.calls["preview"] += 1
        self.previewed.append(file)
        return await self.inner.preview(file, offset=offset, limit=limit, columns=columns)

    def convert(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions
    ) -> AsyncIterator[bytes]:
        self.calls["convert"] += 1
        self.converted.append((target, options))
        return self.inner.convert(file, target, options)


class Setup:
    """A core wired with the counting engine, and its people."""

    def __init__(self, world: World, engine: CountingEngine, cache: MemoryCache) -> None:
        self.world = world
        self.app = world.app
        self.engine = engine
        self.cache = cache


async def make_setup(clock: FixedClock, *, analyze: bool = True) -> Setup:
    blobs = MemoryBlobStore()
    cache = MemoryCache()
    engine = CountingEngine(ArrowTableEngine(blobs, clock=clock))
    keys = StaticKeyRing([SigningKey("k1", b"s" * 32)], b"c" * 32)
    app = datadl.bootstrap(
        clock=clock, keys=keys, blobs=blobs, cache=cache, tables=engine, analyze=analyze
    )
    await app.accounts.create_organization("acme", "Acme Research")
    await app.accounts.create_organization("other")
    for name in ("olivia", "mark", "oscar", "ada"):
        await app.accounts.create_user(name)
    await app.accounts.add_member("acme", "olivia", Role.MEMBER)
    await app.accounts.add_member("acme", "mark", Role.MEMBER)
    await app.accounts.add_member("acme", "ada", Role.ADMIN)
    await app.accounts.add_member("other", "oscar", Role.MEMBER)
    world = World(
        app=app,
        clock=clock,
        owner=await app.accounts.principal_for("olivia"),
        member=await app.accounts.principal_for("mark"),
        outsider=await app.accounts.principal_for("oscar"),
        admin=await app.accounts.principal_for("ada"),
        org_slug="acme",
    )
    return Setup(world, engine, cache)


@pytest.fixture
async def setup(clock: FixedClock) -> AsyncIterator[Setup]:
    made = await make_setup(clock)
    yield made
    await made.app.insight.aclose()


async def publish(
    setup: Setup, data: bytes = PENGUINS, filename: str = "penguins.csv", **facts: object
) -> Dataset:
    facts.setdefault("visibility", Visibility.ORGANIZATION)
    return await setup.app.datasets.publish(
        setup.world.owner,
        DatasetFacts(organization="acme", filename=filename, **facts),  # type: ignore[arg-type]
        chunks(data, 4096),
    )


async def test_metadata_is_pending_while_analysing_then_ready(setup: Setup) -> None:
    """Metadata answers AnalysisPending (with a wait) until the analysis ends, then the profile."""
    setup.engine.gate = asyncio.Event()
    dataset = await publish(setup)
    assert dataset.status is DatasetStatus.ANALYZING
    member = setup.world.member
    with pytest.raises(AnalysisPending) as caught:
        await setup.app.insight.metadata(member, dataset.id)
    assert caught.value.code == "analysis_pending"
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    await asyncio.sleep(0.05)
    assert setup.app.insight.pending == 1
    setup.engine.gate.set()
    await setup.app.insight.drain()
    profile = await setup.app.insight.metadata(member, dataset.id)
    assert (profile.row_count, len(profile.columns)) == (344, 8)
    assert profile.sha256 == dataset.file.sha256
    after = await setup.app.datasets.get(member, dataset.id)
    assert (after.status, after.row_count, after.column_count) == (DatasetStatus.READY, 344, 8)
    assert after.analysis_error is None


async def test_metadata_of_a_hidden_dataset_is_not_found_like_a_missing_one(setup: Setup) -> None:
    """A dataset the principal may not see answers not_found, exactly as an unknown id does."""
    dataset = await publish(setup, visibility=Visibility.PRIVATE)
    await setup.app.insight.drain()
    codes = []
    for principal, dataset_id in (
        (setup.world.outsider, dataset.id),
        (setup.world.member, dataset.id),
        (setup.world.owner, "no-such-id"),
    ):
        for call in (
            setup.app.insight.metadata(principal, dataset_id),
            setup.app.insight.preview(principal, dataset_id),
        ):
            with pytest.raises(DatadlError) as caught:
                await call
            codes.append(caught.value.code)
    assert codes == ["not_found"] * 6
    assert (await setup.app.insight.metadata(setup.world.owner, dataset.id)).row_count == 344


async def test_failed_analysis_is_recorded_and_the_original_still_downloads(
    setup: Setup,
) -> None:
    """A file the engine cannot read ends failed with its reason; downloading it still works."""
    dataset = await publish(setup, RAGGED, "broken.csv")
    await setup.app.insight.drain()
    member = setup.world.member
    after = await setup.app.datasets.get(member, dataset.id)
    assert after.status is DatasetStatus.FAILED
    assert after.analysis_error is not None and "fields" in after.analysis_error
    with pytest.raises(AnalysisFailed) as caught:
        await setup.app.insight.metadata(member, dataset.id)
    assert caught.value.code == "analysis_failed"
    assert caught.value.reason == after.analysis_error
    assert "download" in caught.value.hint
    assert setup.app.insight.pending == 0  # a failure is final: no new analysis is started
    async with await setup.app.downloads.open(member, DownloadAsk(dataset.id)) as download:
        body = b"".join([chunk async for chunk in download])
    assert body == RAGGED


async def test_a_passing_storage_outage_leaves_the_analysis_pending(clock: FixedClock) -> None:
    """An unreachable store is no verdict on the file: the dataset stays analysing, not failed."""
    setup = await make_setup(clock)
    dataset = await publish(setup)
    await setup.app.insight.drain()  # the first analysis succeeds; forget it
    await setup.cache.delete(f"insight:profile:{setup.engine.version}:{dataset.file.sha256}")

    async def unavailable(file: DatasetFile) -> TableProfile:
        raise StorageUnavailable("The object store hung up.")

    setup.engine.profile = unavailable  # type: ignore[method-assign]
    replaced = await setup.app.datasets.replace_file(
        setup.world.owner, dataset.id, chunks(PENGUINS + b"Gentoo,Biscoe,1,1,1,1,male,2009\n")
    )
    await setup.app.insight.drain()
    after = await setup.app.datasets.get(setup.world.owner, dataset.id)
    assert (after.version, after.status) == (replaced.version, DatasetStatus.ANALYZING)
    with pytest.raises(AnalysisPending):
        await setup.app.insight.metadata(setup.world.owner, dataset.id)
    await setup.app.insight.aclose()


async def test_a_content_is_profiled_once_whatever_publishes_it(setup: Setup) -> None:
    """Two datasets with the same bytes, and a repeated analysis, profile the content once."""
    first = await publish(setup, slug="first")
    second = await publish(setup, slug="second")
    await setup.app.insight.drain()
    await setup.app.insight.analyze(first.id)
    await setup.app.insight.drain()
    assert setup.engine.calls["profile"] == 1
    for dataset in (first, second):
        after = await setup.app.datasets.get(setup.world.owner, dataset.id)
        assert (after.status, after.row_count) == (DatasetStatus.READY, 344)
    other = await publish(setup, PENGUINS.replace(b"Adelie", b"Adelia"), slug="third")
    await setup.app.insight.drain()
    assert setup.engine.calls["profile"] == 2
    assert (await setup.app.insight.metadata(setup.world.owner, other.id)).row_count == 344


async def test_metadata_starts_an_analysis_when_none_is_known(clock: FixedClock) -> None:
    """Without an analysis on publication, the first metadata request starts one (202 first)."""
    setup = await make_setup(clock, analyze=False)
    dataset = await publish(setup)
    assert dataset.status is DatasetStatus.READY
    assert setup.app.insight.pending == 0
    with pytest.raises(AnalysisPending):
        await setup.app.insight.metadata(setup.world.owner, dataset.id)
    await setup.app.insight.drain()
    assert (await setup.app.insight.metadata(setup.world.owner, dataset.id)).row_count == 344
    assert setup.engine.calls["profile"] == 1


async def test_metadata_of_an_older_version_is_its_own_profile(setup: Setup) -> None:
    """Each version's metadata describes that version's file."""
    dataset = await publish(setup)
    await setup.app.insight.drain()
    longer = PENGUINS + b"Gentoo,Biscoe,50,15,220,5000,male,2009\n"
    await setup.app.datasets.replace_file(setup.world.owner, dataset.id, chunks(longer))
    await setup.app.insight.drain()
    owner = setup.world.owner
    assert (await setup.app.insight.metadata(owner, dataset.id)).row_count == 345
    assert (await setup.app.insight.metadata(owner, dataset.id, version=1)).row_count == 344
    with pytest.raises(DatadlError) as caught:
        await setup.app.insight.metadata(owner, dataset.id, version=9)
    assert caught.value.code == "not_found"


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_preview_limit_outside_1_to_1000_is_a_bad_request(setup: Setup, limit: int) -> None:
    """A page of no rows or of more than 1,000 rows is refused with a hint."""
    dataset = await publish(setup)
    with pytest.raises(BadRequest) as caught:
        await setup.app.insight.preview(setup.world.member, dataset.id, limit=limit)
    assert caught.value.code == "bad_request"
    assert "1000" in caught.value.hint
    assert setup.engine.calls["preview"] == 0


async def test_preview_bounds_and_column_subset(setup: Setup) -> None:
    """Pages of 1 and 1,000 rows work; a column subset returns just those columns, in order."""
    dataset = await publish(setup)
    await setup.app.insight.drain()
    member = setup.world.member
    one = await setup.app.insight.preview(member, dataset.id, limit=1)
    assert one.rows == (("Adelie", "Torgersen", 39.1, 18.7, 181, 3750, "male", 2007),)
    assert one.total_rows == 344
    full = await setup.app.insight.preview(member, dataset.id, limit=1000)
    assert len(full.rows) == 344
    page = await setup.app.insight.preview(
        member, dataset.id, offset=2, limit=3, columns=["year", "species"]
    )
    assert [c.name for c in page.columns] == ["year", "species"]
    assert page.rows == ((2007, "Adelie"),) * 3
    assert (page.offset, page.limit) == (2, 3)
    with pytest.raises(BadRequest):
        await setup.app.insight.preview(member, dataset.id, columns=["nope"])


async def test_first_page_is_served_before_the_analysis_ends(setup: Setup) -> None:
    """While the analysis is held, a preview is read straight from the published file."""
    setup.engine.gate = asyncio.Event()
    dataset = await publish(setup)
    page = await setup.app.insight.preview(setup.world.member, dataset.id, limit=5)
    assert len(page.rows) == 5
    assert setup.engine.previewed[-1].storage_key == dataset.file.storage_key
    setup.engine.gate.set()


async def test_deep_preview_after_analysis_reads_the_parquet_derivative(setup: Setup) -> None:
    """After the analysis, pages come from the parquet derivative and equal the original's."""
    setup.engine.gate = asyncio.Event()
    dataset = await publish(setup)
    member = setup.world.member
    before = await setup.app.insight.preview(member, dataset.id, offset=300, limit=44)
    assert setup.engine.previewed[-1].format is FileFormat.CSV
    setup.engine.gate.set()
    await setup.app.insight.drain()
    assert setup.engine.converted == [(FileFormat.PARQUET, ConvertOptions())]
    after = await setup.app.insight.preview(member, dataset.id, offset=300, limit=44)
    used = setup.engine.previewed[-1]
    assert used.format is FileFormat.PARQUET
    assert used.storage_key.startswith(f"derived/{dataset.file.sha256}/")
    assert after.rows == before.rows
    assert [c.name for c in after.columns] == [c.name for c in before.columns]
    assert after.total_rows == 344
    # A vanished derivative is rebuilt on demand; meanwhile the original answers.
    await setup.app.blobs.delete(used.storage_key)
    again = await setup.app.insight.preview(member, dataset.id, offset=300, limit=44)
    assert again.rows == before.rows
    assert setup.engine.previewed[-1].storage_key == dataset.file.storage_key


async def test_parquet_input_needs_no_derivative(setup: Setup) -> None:
    """A parquet dataset is previewed from its own row groups; analysis converts nothing."""
    csv = await publish(setup, slug="csv")
    await setup.app.insight.drain()
    download = await setup.app.downloads.open(
        setup.world.owner, DownloadAsk(csv.id, format="parquet")
    )
    async with download:
        parquet = b"".join([chunk async for chunk in download])
    converts = setup.engine.calls["convert"]
    dataset = await publish(setup, parquet, "penguins.parquet", slug="pq")
    await setup.app.insight.drain()
    assert setup.engine.calls["convert"] == converts
    page = await setup.app.insight.preview(setup.world.owner, dataset.id, offset=340, limit=10)
    assert len(page.rows) == 4
    assert setup.engine.previewed[-1].storage_key == dataset.file.storage_key


async def test_closing_cancels_running_analyses(setup: Setup) -> None:
    """aclose cancels an analysis still running and leaves the dataset analysing, not failed."""
    setup.engine.gate = asyncio.Event()
    dataset = await publish(setup)
    await asyncio.sleep(0.01)
    assert setup.app.insight.pending == 1
    await setup.app.insight.aclose()
    assert setup.app.insight.pending == 0
    after = await setup.app.datasets.get(setup.world.owner, dataset.id)
    assert after.status is DatasetStatus.ANALYZING
    # The claim on the analysis is released, so another worker may take it up.
    assert (
        await setup.cache.get(f"insight:lock:{setup.engine.version}:{dataset.file.sha256}") is None
    )


async def test_profile_survives_its_json_round_trip(setup: Setup) -> None:
    """A profile read back from the cache equals the one the engine computed."""
    dataset = await publish(setup)
    profile = await setup.engine.inner.profile(dataset.file)
    assert TableProfile.from_dict(profile.to_dict()) == profile


async def test_metadata_repairs_a_status_lost_to_a_concurrent_edit(setup: Setup) -> None:
    """A profile on record with the dataset still marked analysing sets it ready again."""
    dataset = await publish(setup)
    await setup.app.insight.drain()
    ready = await setup.app.catalog.get_dataset(dataset.id)
    await setup.app.catalog.update_dataset(
        attrs.evolve(ready, status=DatasetStatus.ANALYZING, row_count=None, column_count=None)
    )
    assert (await setup.app.insight.metadata(setup.world.owner, dataset.id)).row_count == 344
    after = await setup.app.catalog.get_dataset(dataset.id)
    assert (after.status, after.row_count, after.column_count) == (DatasetStatus.READY, 344, 8)
    assert setup.engine.calls["profile"] == 1


async def test_a_profile_outlives_the_cache(setup: Setup) -> None:
    """With the cache emptied (a restart), the profile stored beside the derivatives answers."""
    dataset = await publish(setup)
    await setup.app.insight.drain()
    key = f"insight:profile:{setup.engine.version}:{dataset.file.sha256}"
    first = await setup.app.insight.metadata(setup.world.owner, dataset.id)
    await setup.cache.delete(key)
    assert await setup.app.insight.metadata(setup.world.owner, dataset.id) == first
    assert await setup.cache.get(key) is not None  # refilled
    assert setup.engine.calls["profile"] == 1
