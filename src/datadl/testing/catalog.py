"""The Catalog contract suite: subclass ``CatalogContract`` and provide a ``catalog`` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs
import pytest

from datadl.domain.access import Principal, can_view
from datadl.domain.errors import Conflict, NotFound, StaleWrite
from datadl.domain.model import Dataset, Permission, Role, Visibility
from datadl.domain.policy import DownloadPolicy, PolicyOverride, QuotaLimit
from datadl.ports.catalog import Audience, Catalog, DatasetQuery
from datadl.testing.builders import (
    api_key,
    at,
    audience_for,
    dataset,
    grant,
    organization,
    token_claims,
    user,
    version_of,
)

ANYONE = Audience(user_id=None)


async def _seed(
    catalog: Catalog, org_ids: Sequence[str] = ("o1",), user_ids: Sequence[str] = ("u1",)
) -> None:
    for org_id in org_ids:
        await catalog.add_organization(organization(org_id))
    for user_id in user_ids:
        await catalog.add_user(user(user_id))


async def _publish(catalog: Catalog, ds: Dataset) -> Dataset:
    await catalog.add_dataset(ds, version_of(ds))
    return ds


async def _list_all(catalog: Catalog, query: DatasetQuery) -> list[Dataset]:
    found: list[Dataset] = []
    while True:
        page = await catalog.list_datasets(query)
        assert len(page) <= query.limit
        # A page that repeats an earlier item would make the walk endless.
        assert not {d.id for d in page} & {d.id for d in found}, "a page repeats an item"
        found.extend(page)
        if len(page) < query.limit:
            return found
        query = attrs.evolve(query, after=(page[-1].created_at, page[-1].id))


def _ids(datasets: Sequence[Dataset]) -> list[str]:
    return [d.id for d in datasets]


def _keyset_order(datasets: Sequence[Dataset]) -> list[str]:
    return _ids(sorted(datasets, key=lambda d: (d.created_at, d.id), reverse=True))


@attrs.frozen
class _AccessWorld:
    datasets: tuple[Dataset, ...]
    principals: dict[str, Principal]


# Who sees what at ``NOW`` in the access world; grants marked expired ended an hour ago.
NOW = at(86_400)
_EXPECTED_VISIBLE = {
    "anonymous": {"d-pub"},
    "owner": {
        "d-pub", "d-org", "d-priv", "d-user-grant", "d-user-expired", "d-org-grant",
        "d-org-expired", "d-beta-priv",
    },
    "admin": {
        "d-pub", "d-org", "d-priv", "d-user-grant", "d-user-expired", "d-org-grant",
        "d-org-expired", "d-beta-priv",
    },
    "member": {"d-pub", "d-org", "d-beta-priv"},
    "outsider": {"d-pub"},
    "beta": {"d-pub", "d-org-grant", "d-beta-org", "d-beta-priv"},
    "grantee": {"d-pub", "d-user-grant"},
    "expired": {"d-pub"},
}  # fmt: skip


async def _access_world(catalog: Catalog) -> _AccessWorld:
    await _seed(
        catalog,
        ("acme", "beta"),
        ("owner", "admin", "member", "outsider", "beta", "grantee", "expired"),
    )
    await catalog.set_membership("acme", "owner", Role.MEMBER)
    await catalog.set_membership("acme", "admin", Role.ADMIN)
    await catalog.set_membership("acme", "member", Role.MEMBER)
    await catalog.set_membership("beta", "beta", Role.MEMBER)
    public, org, private = Visibility.PUBLIC, Visibility.ORGANIZATION, Visibility.PRIVATE
    datasets = tuple(
        dataset(
            ds_id,
            organization_id=org_id,
            owner_id="owner" if org_id == "acme" else "beta",
            visibility=visibility,
            created_at=at(seconds),
            deleted_at=at(7) if ds_id == "d-deleted" else None,
        )
        for ds_id, org_id, visibility, seconds in (
            ("d-pub", "acme", public, 1),
            ("d-org", "acme", org, 2),
            ("d-priv", "acme", private, 2),
            ("d-user-grant", "acme", private, 3),
            ("d-user-expired", "acme", private, 4),
            ("d-org-grant", "acme", private, 4),
            ("d-org-expired", "acme", private, 5),
            ("d-deleted", "acme", public, 6),
            ("d-beta-org", "beta", org, 7),
            ("d-beta-priv", "beta", private, 8),
        )
    )
    for ds in datasets:
        await _publish(catalog, ds)
    later, earlier = NOW + timedelta(hours=1), NOW - timedelta(hours=1)
    for g in (
        grant("g1", "d-user-grant", user_id="grantee", expires_at=later),
        grant("g2", "d-user-expired", user_id="expired", expires_at=earlier),
        grant("g3", "d-org-grant", organization_id="beta", permission=Permission.DOWNLOAD),
        grant("g4", "d-org-expired", organization_id="beta", expires_at=earlier),
        grant("g5", "d-beta-priv", organization_id="acme", expires_at=NOW + timedelta(days=9)),
    ):
        await catalog.add_grant(g)
    principals = {"anonymous": Principal.anonymous()}
    for name in _EXPECTED_VISIBLE:
        if name != "anonymous":
            principals[name] = Principal.for_user(name, await catalog.memberships_of(name))
    return _AccessWorld(datasets=datasets, principals=principals)


class CatalogContract:
    """Every promise of the Catalog port, for any adapter.

    Subclass it in a test module as ``TestMyCatalog(CatalogContract)`` and provide a
    ``catalog`` fixture that yields an empty catalogue.
    """

    # organisations, users, memberships

    async def test_organization_is_found_by_id_and_by_slug(self, catalog: Catalog) -> None:
        """A stored organisation comes back equal, looked up by id or by slug."""
        org = organization("o1", "acme")
        await catalog.add_organization(org)
        assert await catalog.get_organization("o1") == org
        assert await catalog.get_organization("acme") == org

    async def test_missing_organization_is_not_found(self, catalog: Catalog) -> None:
        """Looking up an unknown organisation raises NotFound."""
        await catalog.add_organization(organization("o1", "acme"))
        with pytest.raises(NotFound):
            await catalog.get_organization("nope")

    async def test_organization_id_or_slug_clash_conflicts(self, catalog: Catalog) -> None:
        """A second organisation with a taken id or slug is refused and not stored."""
        await catalog.add_organization(organization("o1", "acme"))
        with pytest.raises(Conflict):
            await catalog.add_organization(organization("o1", "other"))
        with pytest.raises(Conflict):
            await catalog.add_organization(organization("o2", "acme"))
        assert [o.id for o in await catalog.list_organizations()] == ["o1"]
        with pytest.raises(NotFound):
            await catalog.get_organization("other")

    async def test_organizations_are_listed_by_slug(self, catalog: Catalog) -> None:
        """Organisations are listed in slug order, not id or insertion order."""
        for org_id, slug in (("o1", "zeta"), ("o3", "alpha"), ("o2", "mid")):
            await catalog.add_organization(organization(org_id, slug))
        assert [o.slug for o in await catalog.list_organizations()] == ["alpha", "mid", "zeta"]

    async def test_user_is_found_by_id_and_by_name(self, catalog: Catalog) -> None:
        """A stored user comes back equal, looked up by id or by name."""
        alice = user("u1", "alice")
        await catalog.add_user(alice)
        assert await catalog.get_user("u1") == alice
        assert await catalog.get_user("alice") == alice
        with pytest.raises(NotFound):
            await catalog.get_user("bob")

    async def test_user_id_or_name_clash_conflicts(self, catalog: Catalog) -> None:
        """A second user with a taken id or name is refused and not stored."""
        await catalog.add_user(user("u1", "alice"))
        with pytest.raises(Conflict):
            await catalog.add_user(user("u1", "bob"))
        with pytest.raises(Conflict):
            await catalog.add_user(user("u2", "alice"))
        assert [u.id for u in await catalog.list_users()] == ["u1"]

    async def test_users_are_listed_by_name(self, catalog: Catalog) -> None:
        """Users are listed in name order."""
        for user_id, name in (("u1", "carol"), ("u2", "alice"), ("u3", "bob")):
            await catalog.add_user(user(user_id, name))
        assert [u.name for u in await catalog.list_users()] == ["alice", "bob", "carol"]

    async def test_membership_role_is_replaced(self, catalog: Catalog) -> None:
        """Setting a membership again replaces the role; memberships list by organisation id."""
        await _seed(catalog, ("o2", "o1", "o3"), ("u1", "u2"))
        await catalog.set_membership("o2", "u1", Role.MEMBER)
        await catalog.set_membership("o1", "u1", Role.MEMBER)
        await catalog.set_membership("o3", "u2", Role.ADMIN)
        await catalog.set_membership("o2", "u1", Role.ADMIN)
        found = await catalog.memberships_of("u1")
        assert [(m.organization_id, m.user_id, m.role) for m in found] == [
            ("o1", "u1", Role.MEMBER),
            ("o2", "u1", Role.ADMIN),
        ]

    async def test_membership_needs_organization_and_user(self, catalog: Catalog) -> None:
        """A membership naming an unknown organisation or user is NotFound and not stored."""
        await _seed(catalog)
        with pytest.raises(NotFound):
            await catalog.set_membership("nope", "u1", Role.MEMBER)
        with pytest.raises(NotFound):
            await catalog.set_membership("o1", "nobody", Role.MEMBER)
        assert list(await catalog.memberships_of("u1")) == []
        assert list(await catalog.memberships_of("nobody")) == []

    async def test_removing_a_membership_is_idempotent(self, catalog: Catalog) -> None:
        """Ending a membership removes it, and ending it again is no error."""
        await _seed(catalog, ("o1", "o2"))
        await catalog.set_membership("o1", "u1", Role.MEMBER)
        await catalog.set_membership("o2", "u1", Role.MEMBER)
        await catalog.remove_membership("o1", "u1")
        await catalog.remove_membership("o1", "u1")
        await catalog.remove_membership("o9", "u9")
        assert [m.organization_id for m in await catalog.memberships_of("u1")] == ["o2"]

    # API keys

    async def test_api_key_round_trips_and_ids_conflict(self, catalog: Catalog) -> None:
        """A stored key comes back equal; a second key with its id is a Conflict."""
        await _seed(catalog)
        key = api_key("k1", "u1")
        await catalog.add_api_key(key)
        assert await catalog.get_api_key("k1") == key
        with pytest.raises(Conflict):
            await catalog.add_api_key(api_key("k1", "u1", created_at=at(5)))
        assert await catalog.get_api_key("k1") == key
        with pytest.raises(NotFound):
            await catalog.get_api_key("k2")

    async def test_api_keys_are_listed_newest_first(self, catalog: Catalog) -> None:
        """A user's keys list newest first, ties by id descending, other users' keys left out."""
        await _seed(catalog, user_ids=("u1", "u2"))
        for key_id, user_id, seconds in (
            ("ka", "u1", 10),
            ("kb", "u1", 30),
            ("kc", "u1", 30),
            ("kd", "u2", 40),
            ("ke", "u1", 20),
        ):
            await catalog.add_api_key(api_key(key_id, user_id, created_at=at(seconds)))
        assert [k.id for k in await catalog.list_api_keys("u1")] == ["kc", "kb", "ke", "ka"]
        assert list(await catalog.list_api_keys("u3")) == []

    async def test_revoking_a_key_keeps_the_first_time(self, catalog: Catalog) -> None:
        """Revocation marks the key once; revoking again keeps the first revocation time."""
        await _seed(catalog)
        await catalog.add_api_key(api_key("k1", "u1"))
        await catalog.revoke_api_key("k1", at(60))
        await catalog.revoke_api_key("k1", at(120))
        revoked = await catalog.get_api_key("k1")
        assert revoked.revoked_at == at(60)
        assert not revoked.is_usable(at(61))
        assert revoked == attrs.evolve(api_key("k1", "u1"), revoked_at=at(60))
        with pytest.raises(NotFound):
            await catalog.revoke_api_key("k2", at(60))

    # datasets and versions

    async def test_dataset_is_stored_with_its_first_version(self, catalog: Catalog) -> None:
        """A new dataset and its first version come back equal."""
        await _seed(catalog)
        ds = dataset("d1", organization_id="o1", owner_id="u1", tags=("b", "a"))
        await catalog.add_dataset(ds, version_of(ds))
        assert await catalog.get_dataset("d1") == ds
        assert await catalog.find_dataset("o1", ds.slug) == ds
        assert list(await catalog.list_versions("d1")) == [version_of(ds)]
        assert await catalog.get_version("d1", 1) == version_of(ds)

    async def test_missing_dataset_is_not_found(self, catalog: Catalog) -> None:
        """Unknown dataset ids, slugs and versions raise NotFound; unknown lists are empty."""
        await _seed(catalog)
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        with pytest.raises(NotFound):
            await catalog.get_dataset("d2")
        with pytest.raises(NotFound):
            await catalog.find_dataset("o1", "d2")
        with pytest.raises(NotFound):
            await catalog.find_dataset("o2", "d1")
        with pytest.raises(NotFound):
            await catalog.get_version("d1", 2)
        with pytest.raises(NotFound):
            await catalog.get_version("d2", 1)
        assert list(await catalog.list_versions("d2")) == []
        assert list(await catalog.list_grants("d2")) == []

    async def test_dataset_id_clash_keeps_nothing(self, catalog: Catalog) -> None:
        """A dataset with a taken id is a Conflict, and neither it nor its version is kept."""
        await _seed(catalog, ("o1", "o2"))
        first = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        clash = dataset("d1", organization_id="o2", owner_id="u1", slug="other", version=7)
        with pytest.raises(Conflict):
            await catalog.add_dataset(clash, version_of(clash))
        assert await catalog.get_dataset("d1") == first
        assert [v.number for v in await catalog.list_versions("d1")] == [1]
        with pytest.raises(NotFound):
            await catalog.find_dataset("o2", "other")

    async def test_slug_clash_within_organization_keeps_nothing(self, catalog: Catalog) -> None:
        """A live slug taken in the organisation is a Conflict; other organisations may use it."""
        await _seed(catalog, ("o1", "o2"))
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1", slug="s"))
        clash = dataset("d2", organization_id="o1", owner_id="u1", slug="s")
        with pytest.raises(Conflict):
            await catalog.add_dataset(clash, version_of(clash))
        with pytest.raises(NotFound):
            await catalog.get_dataset("d2")
        assert list(await catalog.list_versions("d2")) == []
        elsewhere = await _publish(
            catalog, dataset("d3", organization_id="o2", owner_id="u1", slug="s")
        )
        assert await catalog.find_dataset("o2", "s") == elsewhere

    async def test_deleted_dataset_frees_its_slug(self, catalog: Catalog) -> None:
        """A deleted dataset stays gettable by id, but find_dataset and new datasets ignore it."""
        await _seed(catalog)
        old = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1", slug="s"))
        deleted = attrs.evolve(old, deleted_at=at(10))
        await catalog.update_dataset(deleted)
        assert await catalog.get_dataset("d1") == deleted
        with pytest.raises(NotFound):
            await catalog.find_dataset("o1", "s")
        new = await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1", slug="s"))
        assert await catalog.find_dataset("o1", "s") == new
        renamed = attrs.evolve(deleted, title="Still deleted")
        await catalog.update_dataset(renamed)
        assert await catalog.get_dataset("d1") == renamed
        with pytest.raises(Conflict):
            await catalog.update_dataset(old)
        assert await catalog.get_dataset("d1") == renamed

    async def test_update_dataset_replaces_its_facts(self, catalog: Catalog) -> None:
        """An update is read back; an unknown id is NotFound; a slug clash changes nothing."""
        await _seed(catalog)
        d1 = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        d2 = await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        changed = attrs.evolve(d1, title="New", visibility=Visibility.PRIVATE, slug="renamed")
        await catalog.update_dataset(changed)
        assert await catalog.get_dataset("d1") == changed
        assert await catalog.find_dataset("o1", "renamed") == changed
        with pytest.raises(NotFound):
            await catalog.find_dataset("o1", "d1")
        with pytest.raises(Conflict):
            await catalog.update_dataset(attrs.evolve(d2, slug="renamed", title="Lost"))
        assert await catalog.get_dataset("d2") == d2
        with pytest.raises(NotFound):
            await catalog.update_dataset(dataset("d9", organization_id="o1", owner_id="u1"))

    async def test_update_against_a_stale_read_changes_nothing(self, catalog: Catalog) -> None:
        """With ``expected``, a write based on an overtaken read is StaleWrite and is not made."""
        await _seed(catalog)
        read = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await catalog.increment_download_count("d1")  # counting is no change of facts
        first = attrs.evolve(read, title="First")
        await catalog.update_dataset(first, expected=read)
        with pytest.raises(StaleWrite):
            await catalog.update_dataset(attrs.evolve(read, description="Lost"), expected=read)
        with pytest.raises(StaleWrite):
            await catalog.add_version(
                attrs.evolve(read, version=2), version_of(read, 2), expected=read
            )
        stored = await catalog.get_dataset("d1")
        assert attrs.evolve(stored, download_count=0) == first
        assert [v.number for v in await catalog.list_versions("d1")] == [1]
        await catalog.add_version(
            attrs.evolve(first, version=2), version_of(first, 2), expected=stored
        )
        assert (await catalog.get_dataset("d1")).version == 2

    async def test_updates_never_write_the_download_count(self, catalog: Catalog) -> None:
        """The counter only grows by increments: a dataset written back keeps every count."""
        await _seed(catalog)
        read = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await asyncio.gather(*(catalog.increment_download_count("d1") for _ in range(3)))
        await catalog.update_dataset(attrs.evolve(read, title="Renamed"))
        await catalog.add_version(attrs.evolve(read, version=2), version_of(read, 2))
        assert (await catalog.get_dataset("d1")).download_count == 3

    async def test_add_version_makes_it_current(self, catalog: Catalog) -> None:
        """A new version is stored with the dataset pointing at it; versions list oldest first."""
        await _seed(catalog)
        d1 = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        v3 = version_of(d1, 3, created_at=at(30))
        v2 = version_of(d1, 2, created_at=at(20))
        await catalog.add_version(attrs.evolve(d1, version=3), v3)
        await catalog.add_version(attrs.evolve(d1, version=2), v2)
        assert (await catalog.get_dataset("d1")).version == 2
        assert [v.number for v in await catalog.list_versions("d1")] == [1, 2, 3]
        assert await catalog.get_version("d1", 3) == v3

    async def test_add_version_clash_keeps_nothing(self, catalog: Catalog) -> None:
        """A version number that exists is a Conflict and the dataset stays as it was."""
        await _seed(catalog)
        d1 = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        with pytest.raises(Conflict):
            await catalog.add_version(
                attrs.evolve(d1, title="Lost"), version_of(d1, 1, created_at=at(9))
            )
        assert await catalog.get_dataset("d1") == d1
        assert list(await catalog.list_versions("d1")) == [version_of(d1)]
        d2 = await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        with pytest.raises(Conflict):
            await catalog.add_version(attrs.evolve(d2, slug=d1.slug, version=2), version_of(d2, 2))
        assert await catalog.get_dataset("d2") == d2
        assert list(await catalog.list_versions("d2")) == [version_of(d2)]
        ghost = dataset("d9", organization_id="o1", owner_id="u1")
        with pytest.raises(NotFound):
            await catalog.add_version(ghost, version_of(ghost, 2))
        with pytest.raises(NotFound):
            await catalog.get_dataset("d9")

    async def test_update_version_marks_it_removed(self, catalog: Catalog) -> None:
        """A removed version is still listed, with its removal time; unknown ones are NotFound."""
        await _seed(catalog)
        d1 = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await catalog.add_version(attrs.evolve(d1, version=2), version_of(d1, 2))
        removed = attrs.evolve(version_of(d1, 1), removed_at=at(99))
        await catalog.update_version(removed)
        assert list(await catalog.list_versions("d1")) == [removed, version_of(d1, 2)]
        with pytest.raises(NotFound):
            await catalog.update_version(version_of(d1, 5))
        with pytest.raises(NotFound):
            await catalog.update_version(attrs.evolve(version_of(d1, 1), dataset_id="d9"))

    async def test_download_count_increments_atomically(self, catalog: Catalog) -> None:
        """Concurrent increments all count, and only on the named dataset."""
        await _seed(catalog)
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        await asyncio.gather(*(catalog.increment_download_count("d1") for _ in range(25)))
        assert (await catalog.get_dataset("d1")).download_count == 25
        assert (await catalog.get_dataset("d2")).download_count == 0

    async def test_purge_dataset_removes_what_hangs_off_it(self, catalog: Catalog) -> None:
        """Purging drops the dataset, its versions, grants and policy, and nothing else."""
        await _seed(catalog, user_ids=("u1", "u2"))
        d1 = await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        d2 = await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        await catalog.add_version(attrs.evolve(d1, version=2), version_of(d1, 2))
        await catalog.add_grant(grant("g1", "d1", user_id="u2"))
        await catalog.add_grant(grant("g2", "d2", user_id="u2"))
        await catalog.set_dataset_policy("d1", PolicyOverride(require_token=True))
        await catalog.set_dataset_policy("d2", PolicyOverride(allow_anonymous=False))
        await catalog.purge_dataset("d1")
        with pytest.raises(NotFound):
            await catalog.get_dataset("d1")
        assert list(await catalog.list_versions("d1")) == []
        assert list(await catalog.list_grants("d1")) == []
        assert await catalog.get_dataset_policy("d1") is None
        assert await catalog.get_dataset("d2") == d2
        assert [g.id for g in await catalog.list_grants("d2")] == ["g2"]
        assert list(await catalog.list_dataset_policies()) == [
            ("d2", PolicyOverride(allow_anonymous=False))
        ]
        assert (await catalog.get_organization("o1")).id == "o1"

    async def test_deleted_datasets_are_listed_for_cleanup(self, catalog: Catalog) -> None:
        """Exactly the datasets marked deleted are listed, until they are purged."""
        await _seed(catalog)
        for i, deleted_at in enumerate((None, at(5), None, at(3))):
            await _publish(
                catalog,
                dataset(f"d{i}", organization_id="o1", owner_id="u1", deleted_at=deleted_at),
            )
        assert sorted(d.id for d in await catalog.list_deleted_datasets()) == ["d1", "d3"]
        await catalog.purge_dataset("d1")
        assert [d.id for d in await catalog.list_deleted_datasets()] == ["d3"]

    # grants and policies

    async def test_grants_list_oldest_first_expired_included(self, catalog: Catalog) -> None:
        """Grants of a dataset list oldest first (ties by id), expired ones included."""
        await _seed(catalog, ("o1", "o2"), ("u1", "u2"))
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        stored = [
            grant("gc", "d1", user_id="u2", created_at=at(20), expires_at=at(21)),
            grant("gz", "d1", organization_id="o2", created_at=at(10)),
            grant("gb", "d1", user_id="u2", created_at=at(20), permission=Permission.DOWNLOAD),
            grant("gd", "d2", user_id="u2", created_at=at(5)),
        ]
        for g in stored:
            await catalog.add_grant(g)
        assert list(await catalog.list_grants("d1")) == [stored[1], stored[2], stored[0]]

    async def test_grant_needs_its_dataset(self, catalog: Catalog) -> None:
        """A grant on an unknown dataset is NotFound and not stored."""
        await _seed(catalog)
        with pytest.raises(NotFound):
            await catalog.add_grant(grant("g1", "d9", user_id="u1"))
        assert list(await catalog.list_grants("d9")) == []

    async def test_delete_grant_removes_only_that_grant(self, catalog: Catalog) -> None:
        """Deleting a grant removes it; an unknown grant or one of another dataset is NotFound."""
        await _seed(catalog, user_ids=("u1", "u2"))
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        await _publish(catalog, dataset("d2", organization_id="o1", owner_id="u1"))
        await catalog.add_grant(grant("g1", "d1", user_id="u2"))
        await catalog.add_grant(grant("g2", "d1", user_id="u2", created_at=at(1)))
        await catalog.add_grant(grant("g3", "d2", user_id="u2"))
        with pytest.raises(NotFound):
            await catalog.delete_grant("d1", "g3")
        await catalog.delete_grant("d1", "g1")
        with pytest.raises(NotFound):
            await catalog.delete_grant("d1", "g1")
        assert [g.id for g in await catalog.list_grants("d1")] == ["g2"]
        assert [g.id for g in await catalog.list_grants("d2")] == ["g3"]

    async def test_organization_policy_is_replaced(self, catalog: Catalog) -> None:
        """An organisation has no policy until set; setting replaces; unknown ones are NotFound."""
        await _seed(catalog, ("o1", "o2"))
        assert await catalog.get_policy("o1") is None
        first = DownloadPolicy(require_token=True, user_quota=QuotaLimit(bytes=10))
        second = DownloadPolicy(allowed_formats=frozenset({"csv", "original"}))
        await catalog.set_policy("o1", first)
        assert await catalog.get_policy("o1") == first
        await catalog.set_policy("o1", second)
        assert await catalog.get_policy("o1") == second
        assert await catalog.get_policy("o2") is None
        with pytest.raises(NotFound):
            await catalog.set_policy("o9", first)
        assert await catalog.get_policy("o9") is None

    async def test_dataset_policy_is_set_and_removed(self, catalog: Catalog) -> None:
        """A dataset policy is replaced, removed with None, and NotFound for unknown datasets."""
        await _seed(catalog)
        for dataset_id in ("d2", "d1"):
            await _publish(catalog, dataset(dataset_id, organization_id="o1", owner_id="u1"))
        override = PolicyOverride(max_download_bytes=5, terms="Be nice.")
        assert await catalog.get_dataset_policy("d1") is None
        await catalog.set_dataset_policy("d1", override)
        await catalog.set_dataset_policy("d2", PolicyOverride(require_token=True))
        assert await catalog.get_dataset_policy("d1") == override
        assert sorted(await catalog.list_dataset_policies()) == [
            ("d1", override),
            ("d2", PolicyOverride(require_token=True)),
        ]
        await catalog.set_dataset_policy("d1", None)
        assert await catalog.get_dataset_policy("d1") is None
        await catalog.set_dataset_policy("d1", None)
        assert [d for d, _ in await catalog.list_dataset_policies()] == ["d2"]
        with pytest.raises(NotFound):
            await catalog.set_dataset_policy("d9", override)

    # issued tokens

    async def test_token_claims_round_trip(self, catalog: Catalog) -> None:
        """Issued token claims come back equal; a taken id is a Conflict; unknown is NotFound."""
        await _seed(catalog)
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        claims = token_claims("t1", "d1", principal_id="u1", max_uses=None)
        await catalog.add_token(claims)
        assert await catalog.get_token("t1") == claims
        with pytest.raises(Conflict):
            await catalog.add_token(token_claims("t1", "d1", max_uses=1))
        assert await catalog.get_token("t1") == claims
        with pytest.raises(NotFound):
            await catalog.get_token("t2")

    async def test_purge_tokens_removes_those_expired_before(self, catalog: Catalog) -> None:
        """Tokens that expired strictly before the cut-off are removed and counted."""
        await _seed(catalog)
        await _publish(catalog, dataset("d1", organization_id="o1", owner_id="u1"))
        for token_id, expires in (("t1", 100), ("t2", 200), ("t3", 300)):
            await catalog.add_token(token_claims(token_id, "d1", expires_at=at(expires)))
        assert await catalog.purge_tokens(at(200)) == 1
        with pytest.raises(NotFound):
            await catalog.get_token("t1")
        assert await catalog.get_token("t2") == token_claims("t2", "d1", expires_at=at(200))
        assert await catalog.purge_tokens(at(200)) == 0
        assert await catalog.purge_tokens(at(301)) == 2

    # listing

    async def test_listing_pages_follow_the_keyset_order(self, catalog: Catalog) -> None:
        """Pages by (created_at, id) descending join up with no gap or repeat, ties included."""
        await _seed(catalog)
        times = {"a": 10, "b": 20, "c": 20, "d": 20, "e": 30, "f": 10, "g": 40, "h": 30}
        stored = [
            await _publish(
                catalog, dataset(i, organization_id="o1", owner_id="u1", created_at=at(s))
            )
            for i, s in times.items()
        ]
        expected = _keyset_order(stored)
        assert expected == ["g", "h", "e", "d", "c", "b", "f", "a"]
        for limit in (1, 2, 3, 8, 20):
            found = await _list_all(catalog, DatasetQuery(audience=ANYONE, limit=limit))
            assert _ids(found) == expected
        first = await catalog.list_datasets(DatasetQuery(audience=ANYONE, limit=3))
        assert _ids(first) == ["g", "h", "e"]
        after_tie = DatasetQuery(audience=ANYONE, limit=2, after=(at(20), "c"))
        assert _ids(await catalog.list_datasets(after_tie)) == ["b", "f"]
        after_gap = DatasetQuery(audience=ANYONE, after=(at(25), "zzz"))
        assert _ids(await catalog.list_datasets(after_gap)) == ["d", "c", "b", "f", "a"]

    async def test_listing_filters_combine(self, catalog: Catalog) -> None:
        """Text, organisation, tag and visibility filters each narrow the listing, together too."""
        await _seed(catalog, ("o1", "o2"))
        specs = [
            ("d1", "o1", Visibility.PUBLIC, "Rainfall", "", ("weather",)),
            ("d2", "o1", Visibility.PRIVATE, "Census", "about RAINFALL too", ("people",)),
            ("d3", "o2", Visibility.PUBLIC, "Roads", "", ("Rain", "transport")),
            ("d4", "o2", Visibility.ORGANIZATION, "Budget", "", ("money", "weather")),
        ]
        for i, (ds_id, org, vis, title, description, tags) in enumerate(specs):
            await _publish(
                catalog,
                dataset(
                    ds_id,
                    organization_id=org,
                    owner_id="u1",
                    visibility=vis,
                    title=title,
                    description=description,
                    tags=tags,
                    created_at=at(i),
                ),
            )
        owner = Audience(user_id="u1")

        async def ids(**filters: Any) -> list[str]:
            return _ids(await catalog.list_datasets(DatasetQuery(audience=owner, **filters)))

        assert await ids() == ["d4", "d3", "d2", "d1"]
        assert await ids(text="rain") == ["d3", "d2", "d1"]
        assert await ids(text="nothing-matches") == []
        assert await ids(organization_id="o2") == ["d4", "d3"]
        assert await ids(tag="weather") == ["d4", "d1"]
        assert await ids(tag="rain") == []
        assert await ids(visibility=Visibility.PRIVATE) == ["d2"]
        assert await ids(text="RAIN", organization_id="o1", visibility=Visibility.PUBLIC) == ["d1"]
        assert await ids(tag="weather", organization_id="o2", text="budget") == ["d4"]
        anyone = await catalog.list_datasets(DatasetQuery(audience=ANYONE, text="rain"))
        assert _ids(anyone) == ["d3", "d1"]

    async def test_listing_shows_what_each_principal_may_view(self, catalog: Catalog) -> None:
        """Each audience sees exactly the datasets ``can_view`` allows at that time."""
        world = await _access_world(catalog)
        for name, principal in world.principals.items():
            grants = {d.id: await catalog.list_grants(d.id) for d in world.datasets}
            allowed = [d for d in world.datasets if can_view(principal, d, grants[d.id], NOW)]
            found = await _list_all(
                catalog, DatasetQuery(audience=audience_for(principal, NOW), limit=3)
            )
            assert set(_ids(found)) == _EXPECTED_VISIBLE[name], name
            assert _ids(found) == _keyset_order(allowed), name

    async def test_listing_without_a_time_counts_every_grant(self, catalog: Catalog) -> None:
        """With no ``now`` in the audience, expired grants still show their datasets."""
        world = await _access_world(catalog)
        expired = audience_for(world.principals["expired"], None)
        beta = audience_for(world.principals["beta"], None)
        assert set(_ids(await _list_all(catalog, DatasetQuery(audience=expired)))) == {
            "d-pub",
            "d-user-expired",
        }
        assert set(_ids(await _list_all(catalog, DatasetQuery(audience=beta)))) == (
            _EXPECTED_VISIBLE["beta"] | {"d-org-expired"}
        )

    async def test_listing_honours_audience_fields(self, catalog: Catalog) -> None:
        """Admin organisations alone show private datasets; anonymous members see no grants."""
        await _access_world(catalog)
        admin_only = Audience(user_id="nobody", admin_organization_ids=frozenset({"acme"}), now=NOW)
        found = set(_ids(await _list_all(catalog, DatasetQuery(audience=admin_only))))
        assert found == _EXPECTED_VISIBLE["admin"]
        member_without_user = Audience(user_id=None, organization_ids=frozenset({"beta"}), now=NOW)
        found = set(_ids(await _list_all(catalog, DatasetQuery(audience=member_without_user))))
        assert found == {"d-pub", "d-beta-org"}
        # A job that walks everything: no user, every organisation as admin.
        system = Audience(user_id=None, admin_organization_ids=frozenset({"acme"}))
        found = set(_ids(await _list_all(catalog, DatasetQuery(audience=system))))
        # d-beta-priv belongs to beta and reaches the acme admin only through a grant.
        assert found == _EXPECTED_VISIBLE["admin"] - {"d-beta-priv"}

    async def test_listing_never_shows_deleted_datasets(self, catalog: Catalog) -> None:
        """A deleted dataset is listed to nobody, its owner and admins included."""
        world = await _access_world(catalog)
        for principal in world.principals.values():
            query = DatasetQuery(audience=audience_for(principal, NOW), limit=100)
            assert "d-deleted" not in _ids(await catalog.list_datasets(query))

    async def test_listing_limit_bounds_the_page(self, catalog: Catalog) -> None:
        """A page holds at most ``limit`` datasets, the newest ones."""
        await _seed(catalog)
        for i in range(5):
            await _publish(
                catalog, dataset(f"d{i}", organization_id="o1", owner_id="u1", created_at=at(i))
            )
        assert _ids(await catalog.list_datasets(DatasetQuery(audience=ANYONE, limit=2))) == [
            "d4",
            "d3",
        ]
        assert len(await catalog.list_datasets(DatasetQuery(audience=ANYONE))) == 5
