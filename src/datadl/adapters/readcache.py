"""A catalogue that remembers its hottest lookups for a few seconds.

Every download asks the catalogue the same five questions (the dataset, its version, its
grants, the organisation's policy and the dataset's own) and, for a token, the holder's
memberships. Over SQLite each answer is a transaction and several hops to the driver's
thread; together they were most of a ranged request's latency. ``CachedCatalog`` answers
them from memory for ``ttl`` seconds.

What keeps it correct:

- Every write that goes through it empties the cache, whether it succeeds or fails (a
  ``StaleWrite`` means the cache was behind, so the caller's retry must read afresh).
  All services of a process share one ``CachedCatalog``, so a process always sees its
  own changes at once.
- A lookup that races a write is not remembered: each entry records the cache's
  generation before it asked, and is dropped if a write happened meanwhile.
- Misses (``NotFound``) are never remembered: a dataset created by another process is
  seen at once.
- Other processes (server workers, the CLI) are seen within ``ttl`` seconds: a dataset
  made private or a grant revoked elsewhere may still be honoured here for that long.
  docs/decisions.md explains the default and how to turn the cache off (``ttl`` 0).

``increment_download_count`` is the one write that does not empty the cache: it changes
nothing a decision reads, and it happens on every new download. It drops only the
dataset's own entry, so the new count shows at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from datadl.domain.model import (
    ApiKey,
    Dataset,
    DatasetVersion,
    Grant,
    Membership,
    Organization,
    Role,
    User,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride
from datadl.domain.tokens import TokenClaims
from datadl.ports.catalog import Catalog, DatasetQuery

T = TypeVar("T")

#: Entries kept at most; past it the cache starts again from empty.
MAX_ENTRIES = 10_000


class _Entries:
    """What the views of one cache share: the entries and the generation of writes."""

    def __init__(self, ttl: float, max_entries: int, timer: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max = max_entries
        self.timer = timer
        self.entries: dict[tuple[str, ...], tuple[float, Any]] = {}
        self.generation = 0

    def clear(self) -> None:
        self.entries.clear()
        self.generation += 1


class CachedCatalog:
    """A ``Catalog`` over another one, answering the download path's lookups from memory.

    ``ttl`` is in seconds of ``timer`` (monotonic by default). ``fresh()`` is the same
    catalogue without the cached reads: writes through either view empty the one cache.
    Code that reads in order to decide a lasting write (a token's lifetime, whether to
    flag a dataset) takes the fresh view; the download path takes this one.
    """

    def __init__(
        self,
        inner: Catalog,
        *,
        ttl: float,
        max_entries: int = MAX_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("a cached catalogue needs a positive ttl; use the inner one")
        self._inner = inner
        self._shared = _Entries(ttl, max_entries, timer)
        self._reads_cached = True

    def fresh(self) -> CachedCatalog:
        """This catalogue with every read going to the inner one (writes still empty the
        cache this one reads from)."""
        view = object.__new__(CachedCatalog)
        view._inner = self._inner
        view._shared = self._shared
        view._reads_cached = False
        return view

    @property
    def inner(self) -> Catalog:
        """The catalogue behind the cache."""
        return self._inner

    @property
    def reads_cached(self) -> bool:
        """Whether this view answers the download path's lookups from memory."""
        return self._reads_cached

    def clear(self) -> None:
        """Forget everything (and anything read before now that is still on its way)."""
        self._shared.clear()

    async def _cached(self, key: tuple[str, ...], read: Callable[[], Awaitable[T]]) -> T:
        if not self._reads_cached:
            return await read()
        shared = self._shared
        found = shared.entries.get(key)
        now = shared.timer()
        if found is not None and found[0] > now:
            value: T = found[1]
            return value
        generation = shared.generation
        value = await read()
        if generation == shared.generation:
            if len(shared.entries) >= shared.max:
                shared.entries.clear()
            shared.entries[key] = (now + shared.ttl, value)
        return value

    async def _write(self, change: Awaitable[T]) -> T:
        try:
            return await change
        finally:
            self.clear()

    # --- the cached lookups ------------------------------------------------------------------

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return await self._cached(
            ("dataset", dataset_id), lambda: self._inner.get_dataset(dataset_id)
        )

    async def get_version(self, dataset_id: str, number: int) -> DatasetVersion:
        return await self._cached(
            ("version", dataset_id, str(number)),
            lambda: self._inner.get_version(dataset_id, number),
        )

    async def list_grants(self, dataset_id: str) -> Sequence[Grant]:
        grants = await self._cached(
            ("grants", dataset_id), lambda: self._list(self._inner.list_grants(dataset_id))
        )
        return list(grants)

    async def get_policy(self, organization_id: str) -> DownloadPolicy | None:
        return await self._cached(
            ("policy", organization_id), lambda: self._inner.get_policy(organization_id)
        )

    async def get_dataset_policy(self, dataset_id: str) -> PolicyOverride | None:
        return await self._cached(
            ("dataset-policy", dataset_id), lambda: self._inner.get_dataset_policy(dataset_id)
        )

    async def memberships_of(self, user_id: str) -> Sequence[Membership]:
        memberships = await self._cached(
            ("memberships", user_id), lambda: self._list(self._inner.memberships_of(user_id))
        )
        return list(memberships)

    @staticmethod
    async def _list(read: Awaitable[Sequence[T]]) -> tuple[T, ...]:
        # Kept as a tuple, handed out as a fresh list: a caller cannot change the entry.
        return tuple(await read)

    # --- reads that go straight through ------------------------------------------------------

    async def get_organization(self, id_or_slug: str) -> Organization:
        return await self._inner.get_organization(id_or_slug)

    async def list_organizations(self) -> Sequence[Organization]:
        return await self._inner.list_organizations()

    async def get_user(self, id_or_name: str) -> User:
        return await self._inner.get_user(id_or_name)

    async def list_users(self) -> Sequence[User]:
        return await self._inner.list_users()

    async def get_api_key(self, key_id: str) -> ApiKey:
        return await self._inner.get_api_key(key_id)

    async def list_api_keys(self, user_id: str) -> Sequence[ApiKey]:
        return await self._inner.list_api_keys(user_id)

    async def find_dataset(self, organization_id: str, slug: str) -> Dataset:
        return await self._inner.find_dataset(organization_id, slug)

    async def list_datasets(self, query: DatasetQuery) -> Sequence[Dataset]:
        return await self._inner.list_datasets(query)

    async def list_deleted_datasets(self) -> Sequence[Dataset]:
        return await self._inner.list_deleted_datasets()

    async def list_versions(self, dataset_id: str) -> Sequence[DatasetVersion]:
        return await self._inner.list_versions(dataset_id)

    async def list_dataset_policies(self) -> Sequence[tuple[str, PolicyOverride]]:
        return await self._inner.list_dataset_policies()

    async def get_token(self, token_id: str) -> TokenClaims:
        return await self._inner.get_token(token_id)

    # --- writes: each empties the cache ------------------------------------------------------

    async def add_organization(self, organization: Organization) -> None:
        await self._write(self._inner.add_organization(organization))

    async def add_user(self, user: User) -> None:
        await self._write(self._inner.add_user(user))

    async def set_membership(self, organization_id: str, user_id: str, role: Role) -> None:
        await self._write(self._inner.set_membership(organization_id, user_id, role))

    async def remove_membership(self, organization_id: str, user_id: str) -> None:
        await self._write(self._inner.remove_membership(organization_id, user_id))

    async def add_api_key(self, key: ApiKey) -> None:
        await self._write(self._inner.add_api_key(key))

    async def revoke_api_key(self, key_id: str, when: datetime) -> None:
        await self._write(self._inner.revoke_api_key(key_id, when))

    async def add_dataset(self, dataset: Dataset, version: DatasetVersion) -> None:
        await self._write(self._inner.add_dataset(dataset, version))

    async def update_dataset(self, dataset: Dataset, *, expected: Dataset | None = None) -> None:
        await self._write(self._inner.update_dataset(dataset, expected=expected))

    async def add_version(
        self, dataset: Dataset, version: DatasetVersion, *, expected: Dataset | None = None
    ) -> None:
        await self._write(self._inner.add_version(dataset, version, expected=expected))

    async def update_version(self, version: DatasetVersion) -> None:
        await self._write(self._inner.update_version(version))

    async def increment_download_count(self, dataset_id: str) -> None:
        await self._inner.increment_download_count(dataset_id)
        # Only the count changed: the dataset is read again (its new count shows at once),
        # everything else stays; a read of it still on its way is not kept.
        self._shared.entries.pop(("dataset", dataset_id), None)
        self._shared.generation += 1

    async def purge_dataset(self, dataset_id: str) -> None:
        await self._write(self._inner.purge_dataset(dataset_id))

    async def add_grant(self, grant: Grant) -> None:
        await self._write(self._inner.add_grant(grant))

    async def delete_grant(self, dataset_id: str, grant_id: str) -> None:
        await self._write(self._inner.delete_grant(dataset_id, grant_id))

    async def set_policy(self, organization_id: str, policy: DownloadPolicy) -> None:
        await self._write(self._inner.set_policy(organization_id, policy))

    async def set_dataset_policy(self, dataset_id: str, policy: PolicyOverride | None) -> None:
        await self._write(self._inner.set_dataset_policy(dataset_id, policy))

    async def add_token(self, claims: TokenClaims) -> None:
        await self._write(self._inner.add_token(claims))

    async def purge_tokens(self, expired_before: datetime) -> int:
        return await self._write(self._inner.purge_tokens(expired_before))
