"""The Catalog port: organisations, users, datasets, versions, grants, policies and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

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


@attrs.frozen
class Audience:
    """Whose view a listing is for: the same rule as ``domain.access.can_view``.

    A dataset is listed when it is public, or the user owns it, or it is an organisation
    dataset of one of ``organization_ids``, or its organisation is one of
    ``admin_organization_ids``, or an active grant names the user or one of their
    organisations. Deleted ones never are. A job that must visit every dataset names every
    organisation in ``admin_organization_ids`` (with no user).
    """

    user_id: str | None
    organization_ids: frozenset[str] = frozenset()
    admin_organization_ids: frozenset[str] = frozenset()
    now: datetime | None = None


@attrs.frozen
class DatasetQuery:
    """Filters and keyset position of one page of a dataset listing.

    Results are ordered by (``created_at`` descending, ``id`` descending); ``after`` is the
    (created_at, id) of the last item of the previous page.
    """

    audience: Audience
    text: str | None = None
    organization_id: str | None = None
    tag: str | None = None
    visibility: Visibility | None = None
    limit: int = 20
    after: tuple[datetime, str] | None = None


class Catalog(Protocol):
    """The catalogue of who and what.

    Every method may raise ``Unavailable`` when the store cannot be reached. Writes are
    atomic: on any error nothing of the change is kept.
    """

    # organisations, users, memberships

    async def add_organization(self, organization: Organization) -> None:
        """Store a new organisation; ``Conflict`` if its id or slug is taken."""
        ...

    async def get_organization(self, id_or_slug: str) -> Organization:
        """One organisation by id or slug; ``NotFound`` if absent."""
        ...

    async def list_organizations(self) -> Sequence[Organization]:
        """Every organisation, by slug."""
        ...

    async def add_user(self, user: User) -> None:
        """Store a new user; ``Conflict`` if the id or name is taken."""
        ...

    async def get_user(self, id_or_name: str) -> User:
        """One user by id or name; ``NotFound`` if absent."""
        ...

    async def list_users(self) -> Sequence[User]:
        """Every user, by name."""
        ...

    async def set_membership(self, organization_id: str, user_id: str, role: Role) -> None:
        """Make the user a member with ``role`` (replacing a previous role).

        ``NotFound`` if the organisation or user does not exist.
        """
        ...

    async def remove_membership(self, organization_id: str, user_id: str) -> None:
        """End a membership; ending one that does not exist is not an error."""
        ...

    async def memberships_of(self, user_id: str) -> Sequence[Membership]:
        """The user's memberships, by organisation id."""
        ...

    # API keys

    async def add_api_key(self, key: ApiKey) -> None:
        """Store a new API key (hash only); ``Conflict`` if the id is taken."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKey:
        """One API key by id, revoked or not; ``NotFound`` if absent."""
        ...

    async def list_api_keys(self, user_id: str) -> Sequence[ApiKey]:
        """The user's API keys, newest first."""
        ...

    async def revoke_api_key(self, key_id: str, when: datetime) -> None:
        """Mark the key revoked at ``when`` (idempotent); ``NotFound`` if absent."""
        ...

    # datasets and versions

    async def add_dataset(self, dataset: Dataset, version: DatasetVersion) -> None:
        """Store a new dataset with its first version, together or not at all.

        ``Conflict`` if the id, or the slug within its organisation, is taken.
        """
        ...

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset by id, deleted ones included; ``NotFound`` if absent."""
        ...

    async def find_dataset(self, organization_id: str, slug: str) -> Dataset:
        """A live dataset by its slug in an organisation; ``NotFound`` if absent."""
        ...

    async def list_datasets(self, query: DatasetQuery) -> Sequence[Dataset]:
        """Up to ``query.limit`` datasets visible to the audience, in keyset order."""
        ...

    async def list_deleted_datasets(self) -> Sequence[Dataset]:
        """Datasets marked deleted whose records still exist, for cleanup."""
        ...

    async def update_dataset(self, dataset: Dataset, *, expected: Dataset | None = None) -> None:
        """Replace a dataset's stored facts; ``NotFound`` if absent, ``Conflict`` on slug clash.

        With ``expected`` (the dataset as the caller read it) the write happens only if the
        stored dataset still equals it, else ``StaleWrite``: a read-modify-write never
        undoes a concurrent one. The download counter is never written here (it only
        grows, through ``increment_download_count``) and is left out of the comparison.
        """
        ...

    async def add_version(
        self, dataset: Dataset, version: DatasetVersion, *, expected: Dataset | None = None
    ) -> None:
        """Add a version and make it current by storing ``dataset``, together or not at all.

        ``Conflict`` if the version number exists (a concurrent replace won the race);
        ``StaleWrite`` if ``expected`` is given and the stored dataset no longer equals it.
        """
        ...

    async def list_versions(self, dataset_id: str) -> Sequence[DatasetVersion]:
        """The dataset's versions, oldest first, removed ones included."""
        ...

    async def get_version(self, dataset_id: str, number: int) -> DatasetVersion:
        """One version; ``NotFound`` if absent."""
        ...

    async def update_version(self, version: DatasetVersion) -> None:
        """Replace a version's stored facts (marking it removed); ``NotFound`` if absent."""
        ...

    async def increment_download_count(self, dataset_id: str) -> None:
        """Add one logical download to the dataset's counter, atomically."""
        ...

    async def purge_dataset(self, dataset_id: str) -> None:
        """Remove a dataset and everything hanging off it (versions, grants, policy)."""
        ...

    # grants and policies

    async def add_grant(self, grant: Grant) -> None:
        """Store a grant; ``NotFound`` if the dataset does not exist."""
        ...

    async def list_grants(self, dataset_id: str) -> Sequence[Grant]:
        """The dataset's grants, expired ones included, oldest first."""
        ...

    async def delete_grant(self, dataset_id: str, grant_id: str) -> None:
        """Remove a grant of that dataset; ``NotFound`` if absent."""
        ...

    async def get_policy(self, organization_id: str) -> DownloadPolicy | None:
        """The organisation's policy, or None if it never set one."""
        ...

    async def set_policy(self, organization_id: str, policy: DownloadPolicy) -> None:
        """Replace the organisation's policy; ``NotFound`` if the organisation is absent."""
        ...

    async def get_dataset_policy(self, dataset_id: str) -> PolicyOverride | None:
        """The dataset's own policy, or None if it has none."""
        ...

    async def set_dataset_policy(self, dataset_id: str, policy: PolicyOverride | None) -> None:
        """Replace (or with None remove) the dataset's own policy; ``NotFound`` if absent."""
        ...

    async def list_dataset_policies(self) -> Sequence[tuple[str, PolicyOverride]]:
        """Every dataset's own policy as (dataset id, policy), for cleanup."""
        ...

    # issued download tokens (claims only; the signature is never stored)

    async def add_token(self, claims: TokenClaims) -> None:
        """Record an issued token so it can be listed and revoked; ``Conflict`` if the id exists."""
        ...

    async def get_token(self, token_id: str) -> TokenClaims:
        """The claims of an issued token; ``NotFound`` if absent or purged."""
        ...

    async def purge_tokens(self, expired_before: datetime) -> int:
        """Remove tokens that expired before ``expired_before``; their count."""
        ...
