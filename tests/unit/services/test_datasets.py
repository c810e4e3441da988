"""Publishing, listing, changing, sharing and deleting datasets through the services."""

from __future__ import annotations

import pytest

from datadl.domain.errors import DatadlError
from datadl.domain.model import FileFormat, Permission, Visibility
from datadl.domain.policy import DownloadPolicy, PolicyOverride
from datadl.samples import path as sample_path
from datadl.services.datasets import DatasetChanges, DatasetFacts
from tests.conftest import World, chunks
from tests.unit.services.test_downloads import ROWS, publish


async def stored_keys(world: World) -> list[str]:
    return [k async for k in world.app.blobs.list("")]


async def test_publish_hashes_and_sizes_while_streaming(world: World) -> None:
    """The published file's size and sha256 are those of the streamed bytes."""
    import hashlib

    data = sample_path("penguins.csv").read_bytes()
    dataset = await publish(world, data, title="Penguins")
    assert dataset.file.size_bytes == len(data)
    assert dataset.file.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.file.format is FileFormat.CSV
    assert (dataset.slug, dataset.version) == ("penguins", 1)
    assert await stored_keys(world) == [dataset.file.storage_key]


@pytest.mark.parametrize(
    ("data", "name", "code"),
    [
        (b"", "empty.csv", "bad_request"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "page.csv", "unsupported_format"),
        (b"\x00\x01garbage" * 100, "data.parquet", "unsupported_format"),
    ],
)
async def test_bad_uploads_leave_nothing_behind(
    world: World, data: bytes, name: str, code: str
) -> None:
    """An upload that is empty or not what it claims is refused and nothing is stored."""
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.publish(
            world.owner, DatasetFacts(organization="acme", filename=name), chunks(data)
        )
    assert caught.value.code == code
    assert await stored_keys(world) == []
    assert (await world.app.datasets.list(world.owner)).items == ()


async def test_upload_limit_is_enforced_while_streaming(world: World) -> None:
    """Past the upload limit the publish fails with payload_too_large and keeps nothing."""
    import datadl

    app = datadl.bootstrap(
        catalog=world.app.catalog, blobs=world.app.blobs, clock=world.clock, max_upload_bytes=1000
    )
    with pytest.raises(DatadlError) as caught:
        await app.datasets.publish(world.owner, DatasetFacts(organization="acme"), chunks(ROWS))
    assert caught.value.code == "payload_too_large"
    assert await stored_keys(world) == []


async def test_failed_stream_leaves_nothing(world: World) -> None:
    """An upload stream that breaks mid-way stores no file and no dataset."""

    async def broken():  # type: ignore[no-untyped-def]
        yield ROWS[:5000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await world.app.datasets.publish(world.owner, DatasetFacts(organization="acme"), broken())
    assert await stored_keys(world) == []


async def test_only_members_publish(world: World) -> None:
    """Publishing into an organisation one does not belong to is forbidden."""
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.publish(
            world.outsider, DatasetFacts(organization="acme"), chunks(ROWS)
        )
    assert caught.value.code == "forbidden"


async def test_listing_shows_only_what_each_principal_may_see(world: World) -> None:
    """Each principal lists exactly the datasets visible to them."""
    private = await publish(world, slug="p", visibility=Visibility.PRIVATE)
    internal = await publish(world, slug="o", visibility=Visibility.ORGANIZATION)
    public = await publish(world, slug="pub", visibility=Visibility.PUBLIC)

    async def ids(principal: object) -> set[str]:
        page = await world.app.datasets.list(principal)  # type: ignore[arg-type]
        return {d.id for d in page.items}

    assert await ids(world.owner) == {private.id, internal.id, public.id}
    assert await ids(world.admin) == {private.id, internal.id, public.id}
    assert await ids(world.member) == {internal.id, public.id}
    assert await ids(world.outsider) == {public.id}
    await world.app.datasets.add_grant(
        world.owner, private.id, permission=Permission.VIEW, user="oscar"
    )
    assert await ids(world.outsider) == {private.id, public.id}


async def test_cursor_pages_cover_everything_once(world: World) -> None:
    """Walking the pages with their cursors yields every dataset once, newest first."""
    made = []
    for i in range(7):
        made.append(await publish(world, slug=f"d{i}"))
        if i % 2:
            world.clock.advance(1)
    seen, cursor = [], None
    while True:
        page = await world.app.datasets.list(world.owner, limit=3, cursor=cursor)
        seen.extend(d.id for d in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(d.id for d in made)
    assert len(seen) == len(set(seen))


async def test_cursor_from_another_listing_is_refused(world: World) -> None:
    """A cursor issued for one filter cannot be replayed with another."""
    for i in range(3):
        await publish(world, slug=f"d{i}", tags=("x",))
    page = await world.app.datasets.list(world.owner, limit=1)
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.list(world.owner, limit=1, tag="x", cursor=page.next_cursor)
    assert caught.value.code == "bad_request"


async def test_update_and_delete_are_for_owner_and_admins(world: World) -> None:
    """Members may not change a dataset; the owner may; a deleted one disappears."""
    dataset = await publish(world)
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.update(world.member, dataset.id, DatasetChanges(title="x"))
    assert caught.value.code == "forbidden"
    changed = await world.app.datasets.update(
        world.admin, dataset.id, DatasetChanges(title="New", tags=("a", "a", "b"))
    )
    assert (changed.title, changed.tags) == ("New", ("a", "b"))
    await world.app.datasets.delete(world.owner, dataset.id)
    with pytest.raises(DatadlError) as gone:
        await world.app.datasets.get(world.owner, dataset.id)
    assert gone.value.code == "not_found"


async def test_dataset_policy_cannot_loosen(world: World) -> None:
    """A dataset policy that would loosen its organisation's is refused, naming the field."""
    dataset = await publish(world)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(max_download_bytes=100, allow_anonymous=False)
    )
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.set_dataset_policy(
            world.owner, dataset.id, PolicyOverride(max_download_bytes=1000)
        )
    assert "max_download_bytes" in caught.value.message
    effective = await world.app.datasets.set_dataset_policy(
        world.owner, dataset.id, PolicyOverride(max_download_bytes=50)
    )
    assert effective.max_download_bytes == 50


async def test_only_admins_change_the_organisation_policy(world: World) -> None:
    """Members read the organisation's policy; only admins change it."""
    assert await world.app.datasets.organization_policy(world.member, "acme") == DownloadPolicy()
    with pytest.raises(DatadlError) as caught:
        await world.app.datasets.set_organization_policy(world.member, "acme", DownloadPolicy())
    assert caught.value.code == "forbidden"
    with pytest.raises(DatadlError) as hidden:
        await world.app.datasets.organization_policy(world.outsider, "acme")
    assert hidden.value.code == "not_found"
