"""Read-modify-writes of a dataset never undo a write that landed in between."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

import datadl
from datadl.adapters.memory import MemoryCatalog
from datadl.domain.model import Dataset, DatasetStatus, DatasetVersion, Visibility
from datadl.services.datasets import DatasetChanges, DatasetFacts
from tests.conftest import World, chunks

Interloper = Callable[[MemoryCatalog, str], Awaitable[None]]


class RacingCatalog:
    """A catalog that lets one other writer in between a service's read and its write."""

    def __init__(self, inner: MemoryCatalog) -> None:
        self._inner = inner
        self.interloper: Interloper | None = None
        self.stale_writes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def _interlope(self, dataset_id: str) -> None:
        if self.interloper is not None:
            interloper, self.interloper = self.interloper, None
            await interloper(self._inner, dataset_id)

    async def update_dataset(self, dataset: Dataset, *, expected: Dataset | None = None) -> None:
        await self._interlope(dataset.id)
        await self._inner.update_dataset(dataset, expected=expected)

    async def add_version(
        self, dataset: Dataset, version: DatasetVersion, *, expected: Dataset | None = None
    ) -> None:
        await self._interlope(dataset.id)
        await self._inner.add_version(dataset, version, expected=expected)


async def setup(world: World, *, analyze: bool) -> tuple[datadl.Datadl, RacingCatalog, str]:
    catalog = RacingCatalog(world.app.catalog)  # type: ignore[arg-type]
    app = datadl.bootstrap(
        catalog=catalog,  # type: ignore[arg-type]
        clock=world.clock,
        keys=world.app.keys,
        analyze=analyze,
    )
    facts = DatasetFacts(organization="acme", filename="t.csv", visibility=Visibility.ORGANIZATION)
    dataset = await app.datasets.publish(world.owner, facts, chunks(b"a,b\n1,2\n3,4\n"))
    return app, catalog, dataset.id


async def test_a_patch_keeps_a_concurrent_patch(world: World) -> None:
    app, catalog, dataset_id = await setup(world, analyze=False)

    async def other_patch(inner: MemoryCatalog, dataset_id: str) -> None:
        current = await inner.get_dataset(dataset_id)
        await inner.update_dataset(attrs.evolve(current, description="from elsewhere"))

    catalog.interloper = other_patch
    result = await app.datasets.update(world.owner, dataset_id, DatasetChanges(title="Mine"))
    stored = await app.catalog.get_dataset(dataset_id)
    assert (stored.title, stored.description) == ("Mine", "from elsewhere")
    assert result == stored


async def test_a_new_version_survives_the_old_versions_analysis(world: World) -> None:
    """The analysis of version 1 finishing after version 2 arrived does not bring 1 back."""
    app, catalog, dataset_id = await setup(world, analyze=False)

    async def replace(inner: MemoryCatalog, dataset_id: str) -> None:
        current = await inner.get_dataset(dataset_id)
        second = DatasetVersion(dataset_id, 2, current.file, current.updated_at, None)
        await inner.add_version(attrs.evolve(current, version=2), second)

    catalog.interloper = replace
    await app.insight.analyze(dataset_id, version=1)
    stored = await app.catalog.get_dataset(dataset_id)
    assert stored.version == 2
    assert stored.row_count is None  # version 1's counts were not written over version 2


async def test_replacing_a_file_keeps_what_changed_during_the_upload(world: World) -> None:
    """An analysis or a PATCH that lands while a new file uploads is not lost, nor is the file."""
    app, catalog, dataset_id = await setup(world, analyze=False)

    async def patch(inner: MemoryCatalog, dataset_id: str) -> None:
        current = await inner.get_dataset(dataset_id)
        await inner.update_dataset(attrs.evolve(current, title="Renamed meanwhile"))

    catalog.interloper = patch
    replaced = await app.datasets.replace_file(world.owner, dataset_id, chunks(b"a,b\n5,6\n"))
    stored = await app.catalog.get_dataset(dataset_id)
    assert (stored.version, stored.title) == (2, "Renamed meanwhile")
    assert stored == replaced
    assert stored.status is DatasetStatus.READY
