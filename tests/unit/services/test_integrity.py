"""The integrity check re-hashes stored files and flags what went wrong."""

from __future__ import annotations

from tests.conftest import World, chunks
from tests.unit.services.test_downloads import ROWS, publish


async def test_verify_reports_ok_missing_and_corrupted_and_flags_only_those(world: World) -> None:
    """Intact files pass; a missing and a tampered one are reported and their datasets flagged."""
    good = await publish(world, slug="good")
    gone = await publish(world, slug="gone")
    bad = await publish(world, slug="bad")
    await world.app.blobs.delete(gone.file.storage_key)
    tampered = bytearray(ROWS)
    tampered[100] ^= 0x20
    await world.app.blobs.delete(bad.file.storage_key)
    await world.app.blobs.write(bad.file.storage_key, chunks(bytes(tampered)))

    results = {r.dataset_id: r.outcome async for r in world.app.integrity.verify()}
    assert results == {good.id: "ok", gone.id: "missing", bad.id: "corrupted"}
    for dataset, flagged in ((good, False), (gone, True), (bad, True)):
        current = await world.app.catalog.get_dataset(dataset.id)
        assert (current.corrupted_reason is not None) is flagged


async def test_verify_checks_old_versions_too(world: World) -> None:
    """Every live version is re-hashed, not only the current one."""
    dataset = await publish(world)
    await world.app.datasets.replace_file(world.owner, dataset.id, chunks(b"a,b\n1,2\n"))
    results = [(r.version, r.outcome) async for r in world.app.integrity.verify()]
    assert sorted(results) == [(1, "ok"), (2, "ok")]


async def test_a_corrupted_old_version_is_reported_without_flagging_the_current_one(
    world: World,
) -> None:
    """The dataset's flag speaks of its current file; an old version's damage is only reported."""
    dataset = await publish(world)
    await world.app.datasets.replace_file(world.owner, dataset.id, chunks(b"a,b\n1,2\n"))
    tampered = bytearray(ROWS)
    tampered[10] ^= 0x20
    await world.app.blobs.write(dataset.file.storage_key, chunks(bytes(tampered)))
    results = [(r.version, r.outcome) async for r in world.app.integrity.verify()]
    assert sorted(results) == [(1, "corrupted"), (2, "ok")]
    assert (await world.app.catalog.get_dataset(dataset.id)).corrupted_reason is None
