"""An in-process Catalog: organisations, users, datasets, grants, policies and API keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from datadl.domain.errors import Conflict, NotFound, StaleWrite
from datadl.domain.model import (
    ApiKey,
    Dataset,
    DatasetVersion,
    Grant,
    Membership,
    Organization,
    Role,
    User,
    Visibility,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride
from datadl.domain.tokens import TokenClaims
from datadl.ports.catalog import Audience, DatasetQuery


def _visible(audience: Audience, dataset: Dataset, grants: Iterable[Grant]) -> bool:
    # domain.access.can_view over an Audience: admin organisations count as memberships,
    # as an admin role does in a Principal; with no ``now`` no grant has expired.
    if dataset.is_deleted:
        return False
    if dataset.visibility is Visibility.PUBLIC:
        return True
    user_id = audience.user_id
    if dataset.organization_id in audience.admin_organization_ids:
        return True
    if user_id is not None and dataset.owner_id == user_id:
        return True
    member_of = audience.organization_ids | audience.admin_organization_ids
    if dataset.visibility is Visibility.ORGANIZATION and dataset.organization_id in member_of:
        return True
    if user_id is None:
        return False
    now = audience.now
    for grant in grants:
        if now is not None and not grant.is_active(now):
            continue
        if grant.user_id == user_id or (
            grant.organization_id is not None and grant.organization_id in member_of
        ):
            return True
    return False


def _dataset_key(dataset: Dataset) -> tuple[datetime, str]:
    return (dataset.created_at, dataset.id)


class MemoryCatalog:
    """The Catalog port held in dictionaries of one process.

    Every write checks everything before it changes anything and never awaits in
    between, so a failed write keeps nothing and concurrent tasks see whole changes.
    A deleted dataset frees its slug: only live datasets clash on (organisation, slug).
    Grant ids are unique across datasets; purging a dataset also drops its issued tokens;
    revoking a revoked API key keeps the first revocation time.
    """

    def __init__(self) -> None:
        self._organizations: dict[str, Organization] = {}
        self._users: dict[str, User] = {}
        self._memberships: dict[tuple[str, str], Role] = {}
        self._api_keys: dict[str, ApiKey] = {}
        self._datasets: dict[str, Dataset] = {}
        self._versions: dict[str, dict[int, DatasetVersion]] = {}
        self._grants: dict[str, dict[str, Grant]] = {}
        self._policies: dict[str, DownloadPolicy] = {}
        self._dataset_policies: dict[str, PolicyOverride] = {}
        self._tokens: dict[str, TokenClaims] = {}

    # organisations, users, memberships

    async def add_organization(self, organization: Organization) -> None:
        if organization.id in self._organizations:
            raise Conflict(f"An organisation with id {organization.id!r} exists.")
        if any(o.slug == organization.slug for o in self._organizations.values()):
            raise Conflict(f"The organisation slug {organization.slug!r} is taken.")
        self._organizations[organization.id] = organization

    async def get_organization(self, id_or_slug: str) -> Organization:
        found = self._organizations.get(id_or_slug)
        if found is not None:
            return found
        for organization in self._organizations.values():
            if organization.slug == id_or_slug:
                return organization
        raise NotFound(f"No organisation {id_or_slug!r}.")

    async def list_organizations(self) -> Sequence[Organization]:
        return sorted(self._organizations.values(), key=lambda o: o.slug)

    async def add_user(self, user: User) -> None:
        if user.id in self._users:
            raise Conflict(f"A user with id {user.id!r} exists.")
        if any(u.name == user.name for u in self._users.values()):
            raise Conflict(f"The user name {user.name!r} is taken.")
        self._users[user.id] = user

    async def get_user(self, id_or_name: str) -> User:
        found = self._users.get(id_or_name)
        if found is not None:
            return found
        for user in self._users.values():
            if user.name == id_or_name:
                return user
        raise NotFound(f"No user {id_or_name!r}.")

    async def list_users(self) -> Sequence[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    async def set_membership(self, organization_id: str, user_id: str, role: Role) -> None:
        if organization_id not in self._organizations:
            raise NotFound(f"No organisation {organization_id!r}.")
        if user_id not in self._users:
            raise NotFound(f"No user {user_id!r}.")
        self._memberships[(organization_id, user_id)] = role

    async def remove_membership(self, organization_id: str, user_id: str) -> None:
        self._memberships.pop((organization_id, user_id), None)

    async def memberships_of(self, user_id: str) -> Sequence[Membership]:
        return [
            Membership(organization_id=org_id, user_id=uid, role=role)
            for (org_id, uid), role in sorted(self._memberships.items())
            if uid == user_id
        ]

    # API keys

    async def add_api_key(self, key: ApiKey) -> None:
        if key.id in self._api_keys:
            raise Conflict(f"An API key with id {key.id!r} exists.")
        self._api_keys[key.id] = key

    async def get_api_key(self, key_id: str) -> ApiKey:
        try:
            return self._api_keys[key_id]
        except KeyError:
            raise NotFound(f"No API key {key_id!r}.") from None

    async def list_api_keys(self, user_id: str) -> Sequence[ApiKey]:
        keys = [k for k in self._api_keys.values() if k.user_id == user_id]
        return sorted(keys, key=lambda k: (k.created_at, k.id), reverse=True)

    async def revoke_api_key(self, key_id: str, when: datetime) -> None:
        key = await self.get_api_key(key_id)
        if key.revoked_at is None:
            # The first revocation is the one that counts; repeating it changes nothing.
            self._api_keys[key_id] = attrs.evolve(key, revoked_at=when)

    # datasets and versions

    def _check_slug_free(self, dataset: Dataset) -> None:
        if dataset.is_deleted:
            return
        for other in self._datasets.values():
            if (
                other.id != dataset.id
                and not other.is_deleted
                and other.organization_id == dataset.organization_id
                and other.slug == dataset.slug
            ):
                raise Conflict(f"The slug {dataset.slug!r} is taken in this organisation.")

    def _require_dataset(self, dataset_id: str) -> Dataset:
        try:
            return self._datasets[dataset_id]
        except KeyError:
            raise NotFound(f"No dataset {dataset_id!r}.") from None

    async def add_dataset(self, dataset: Dataset, version: DatasetVersion) -> None:
        if version.dataset_id != dataset.id:
            raise ValueError("the version belongs to another dataset")
        if dataset.id in self._datasets:
            raise Conflict(f"A dataset with id {dataset.id!r} exists.")
        self._check_slug_free(dataset)
        self._datasets[dataset.id] = dataset
        self._versions[dataset.id] = {version.number: version}
        self._grants[dataset.id] = {}

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return self._require_dataset(dataset_id)

    async def find_dataset(self, organization_id: str, slug: str) -> Dataset:
        for dataset in self._datasets.values():
            if (
                dataset.organization_id == organization_id
                and dataset.slug == slug
                and not dataset.is_deleted
            ):
                return dataset
        raise NotFound(f"No dataset {slug!r} in organisation {organization_id!r}.")

    async def list_datasets(self, query: DatasetQuery) -> Sequence[Dataset]:
        if query.limit <= 0:
            return []
        found: list[Dataset] = []
        for dataset in self._datasets.values():
            if query.after is not None and _dataset_key(dataset) >= query.after:
                continue
            if query.organization_id is not None and dataset.organization_id != (
                query.organization_id
            ):
                continue
            if query.visibility is not None and dataset.visibility is not query.visibility:
                continue
            if query.tag is not None and query.tag not in dataset.tags:
                continue
            if query.text is not None and not dataset.matches(query.text):
                continue
            grants = self._grants.get(dataset.id, {}).values()
            if not _visible(query.audience, dataset, grants):
                continue
            found.append(dataset)
        found.sort(key=_dataset_key, reverse=True)
        return found[: query.limit]

    async def list_deleted_datasets(self) -> Sequence[Dataset]:
        deleted = [d for d in self._datasets.values() if d.deleted_at is not None]
        return sorted(deleted, key=lambda d: (d.deleted_at, d.id))

    async def update_dataset(self, dataset: Dataset, *, expected: Dataset | None = None) -> None:
        self._require_dataset(dataset.id)
        self._check_unchanged(expected)
        self._check_slug_free(dataset)
        self._store_dataset(dataset)

    async def add_version(
        self, dataset: Dataset, version: DatasetVersion, *, expected: Dataset | None = None
    ) -> None:
        if version.dataset_id != dataset.id:
            raise ValueError("the version belongs to another dataset")
        self._require_dataset(dataset.id)
        versions = self._versions.setdefault(dataset.id, {})
        if version.number in versions:
            raise Conflict(f"Version {version.number} of {dataset.id!r} exists.")
        self._check_unchanged(expected)
        self._check_slug_free(dataset)
        versions[version.number] = version
        self._store_dataset(dataset)

    def _check_unchanged(self, expected: Dataset | None) -> None:
        if expected is None:
            return
        stored = self._datasets[expected.id]
        if attrs.evolve(stored, download_count=0) != attrs.evolve(expected, download_count=0):
            raise StaleWrite(f"Dataset {expected.id!r} changed since it was read.")

    def _store_dataset(self, dataset: Dataset) -> None:
        # The download counter only grows, through increment_download_count.
        counted = self._datasets[dataset.id].download_count
        self._datasets[dataset.id] = attrs.evolve(dataset, download_count=counted)

    async def list_versions(self, dataset_id: str) -> Sequence[DatasetVersion]:
        versions = self._versions.get(dataset_id, {})
        return [versions[n] for n in sorted(versions)]

    async def get_version(self, dataset_id: str, number: int) -> DatasetVersion:
        try:
            return self._versions[dataset_id][number]
        except KeyError:
            raise NotFound(f"No version {number} of dataset {dataset_id!r}.") from None

    async def update_version(self, version: DatasetVersion) -> None:
        await self.get_version(version.dataset_id, version.number)
        self._versions[version.dataset_id][version.number] = version

    async def increment_download_count(self, dataset_id: str) -> None:
        dataset = self._datasets.get(dataset_id)
        if dataset is not None:
            self._datasets[dataset_id] = attrs.evolve(
                dataset, download_count=dataset.download_count + 1
            )

    async def purge_dataset(self, dataset_id: str) -> None:
        self._datasets.pop(dataset_id, None)
        self._versions.pop(dataset_id, None)
        self._grants.pop(dataset_id, None)
        self._dataset_policies.pop(dataset_id, None)
        for token_id in [t.token_id for t in self._tokens.values() if t.dataset_id == dataset_id]:
            del self._tokens[token_id]

    # grants and policies

    async def add_grant(self, grant: Grant) -> None:
        self._require_dataset(grant.dataset_id)
        grants = self._grants.setdefault(grant.dataset_id, {})
        if any(grant.id in g for g in self._grants.values()):
            raise Conflict(f"A grant with id {grant.id!r} exists.")
        grants[grant.id] = grant

    async def list_grants(self, dataset_id: str) -> Sequence[Grant]:
        grants = self._grants.get(dataset_id, {}).values()
        return sorted(grants, key=lambda g: (g.created_at, g.id))

    async def delete_grant(self, dataset_id: str, grant_id: str) -> None:
        grants = self._grants.get(dataset_id, {})
        if grant_id not in grants:
            raise NotFound(f"No grant {grant_id!r} on dataset {dataset_id!r}.")
        del grants[grant_id]

    async def get_policy(self, organization_id: str) -> DownloadPolicy | None:
        return self._policies.get(organization_id)

    async def set_policy(self, organization_id: str, policy: DownloadPolicy) -> None:
        if organization_id not in self._organizations:
            raise NotFound(f"No organisation {organization_id!r}.")
        self._policies[organization_id] = policy

    async def get_dataset_policy(self, dataset_id: str) -> PolicyOverride | None:
        return self._dataset_policies.get(dataset_id)

    async def set_dataset_policy(self, dataset_id: str, policy: PolicyOverride | None) -> None:
        self._require_dataset(dataset_id)
        if policy is None:
            self._dataset_policies.pop(dataset_id, None)
        else:
            self._dataset_policies[dataset_id] = policy

    async def list_dataset_policies(self) -> Sequence[tuple[str, PolicyOverride]]:
        return sorted(self._dataset_policies.items(), key=lambda item: item[0])

    # issued download tokens

    async def add_token(self, claims: TokenClaims) -> None:
        if claims.token_id in self._tokens:
            raise Conflict(f"A token with id {claims.token_id!r} exists.")
        self._tokens[claims.token_id] = claims

    async def get_token(self, token_id: str) -> TokenClaims:
        try:
            return self._tokens[token_id]
        except KeyError:
            raise NotFound(f"No token {token_id!r}.") from None

    async def purge_tokens(self, expired_before: datetime) -> int:
        doomed = [t.token_id for t in self._tokens.values() if t.expires_at < expired_before]
        for token_id in doomed:
            del self._tokens[token_id]
        return len(doomed)
