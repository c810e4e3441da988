"""Previews past the first rows read like a download: who may page how deep."""

from __future__ import annotations

import pytest

from datadl.domain.access import Principal
from datadl.domain.decision import Forbidden
from datadl.domain.model import Permission, Visibility
from datadl.domain.policy import DownloadPolicy
from datadl.services.datasets import DatasetFacts
from datadl.services.insight import PREVIEW_SAMPLE_ROWS
from tests.conftest import World, chunks

ROWS = b"n,square\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(500))


async def publish(world: World, visibility: Visibility) -> str:
    facts = DatasetFacts(organization="acme", filename="squares.csv", visibility=visibility)
    dataset = await world.app.datasets.publish(world.owner, facts, chunks(ROWS))
    return dataset.id


async def deep_page(world: World, principal: Principal, dataset_id: str) -> list[int]:
    page = await world.app.insight.preview(principal, dataset_id, offset=300, limit=5)
    return [row[0] for row in page.rows]


async def test_a_view_grant_previews_the_sample_only(world: World) -> None:
    dataset_id = await publish(world, Visibility.PRIVATE)
    await world.app.datasets.add_grant(
        world.owner, dataset_id, permission=Permission.VIEW, user="oscar"
    )
    sample = await world.app.insight.preview(
        world.outsider, dataset_id, offset=0, limit=PREVIEW_SAMPLE_ROWS
    )
    assert len(sample.rows) == PREVIEW_SAMPLE_ROWS
    with pytest.raises(Forbidden) as caught:
        await world.app.insight.preview(
            world.outsider, dataset_id, offset=PREVIEW_SAMPLE_ROWS - 1, limit=2
        )
    assert "download access" in (caught.value.hint or "")


async def test_a_download_grant_pages_anywhere(world: World) -> None:
    dataset_id = await publish(world, Visibility.PRIVATE)
    await world.app.datasets.add_grant(
        world.owner, dataset_id, permission=Permission.DOWNLOAD, user="oscar"
    )
    assert await deep_page(world, world.outsider, dataset_id) == [300, 301, 302, 303, 304]


async def test_anonymous_visitors_page_deep_only_where_they_may_download(world: World) -> None:
    dataset_id = await publish(world, Visibility.PUBLIC)
    anonymous = Principal.anonymous()
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(allow_anonymous=False)
    )
    with pytest.raises(Forbidden):
        await deep_page(world, anonymous, dataset_id)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(allow_anonymous=True)
    )
    assert await deep_page(world, anonymous, dataset_id) == [300, 301, 302, 303, 304]


async def test_a_token_only_policy_stops_members_but_not_admins(world: World) -> None:
    dataset_id = await publish(world, Visibility.ORGANIZATION)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(require_token=True)
    )
    with pytest.raises(Forbidden):
        await deep_page(world, world.member, dataset_id)
    assert await deep_page(world, world.admin, dataset_id) == [300, 301, 302, 303, 304]


@pytest.mark.parametrize(
    "policy",
    [DownloadPolicy(terms="Cite the source."), DownloadPolicy(max_download_bytes=100)],
    ids=["terms", "size-cap"],
)
async def test_terms_or_a_size_cap_stop_members_at_the_sample(
    world: World, policy: DownloadPolicy
) -> None:
    dataset_id = await publish(world, Visibility.ORGANIZATION)
    await world.app.datasets.set_organization_policy(world.admin, "acme", policy)
    sample = await world.app.insight.preview(world.member, dataset_id, offset=0, limit=10)
    assert len(sample.rows) == 10
    with pytest.raises(Forbidden):
        await deep_page(world, world.member, dataset_id)
    assert await deep_page(world, world.admin, dataset_id) == [300, 301, 302, 303, 304]
