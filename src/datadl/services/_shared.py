"""Helpers the use cases share: loading what a principal may see, and stream plumbing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from datetime import datetime

from datadl.domain.access import Principal, can_administer, can_view
from datadl.domain.decision import AuthRequired, Forbidden, NotVisible
from datadl.domain.errors import NotFound, StaleWrite
from datadl.domain.model import Dataset, Grant, Scope
from datadl.domain.policy import DownloadPolicy, effective_policy
from datadl.domain.ratelimit import RateDecision, RateLimit, gcra, ratelimit_fields
from datadl.ports.catalog import Audience, Catalog, DatasetQuery
from datadl.ports.usage import UsageStore

_CAS_ATTEMPTS = 64
_WALK_PAGE = 200

#: The policy of an organisation that never set one.
DEFAULT_POLICY = DownloadPolicy()


def require_scope(principal: Principal, scope: Scope) -> None:
    """Refuse a credential that lacks ``scope``; says so before any lookup, leaking nothing."""
    if not principal.has_scope(scope):
        raise Forbidden(
            f"This API key lacks the '{scope}' scope.",
            hint=f"Create a key with the '{scope}' scope.",
        )


def require_user(principal: Principal) -> str:
    """The principal's user id, or ``AuthRequired`` for an anonymous request."""
    if principal.user_id is None:
        raise AuthRequired(
            "Sign in or send an API key.", hint="Send 'Authorization: Bearer <key>'."
        )
    return principal.user_id


async def visible_dataset(
    catalog: Catalog, principal: Principal, dataset_id: str, now: datetime
) -> tuple[Dataset, Sequence[Grant]]:
    """The dataset and its grants if the principal may see it; else the same ``not_found``
    as for an id that does not exist."""
    try:
        dataset = await catalog.get_dataset(dataset_id)
    except NotFound:
        raise NotVisible("No such dataset.") from None
    grants = await catalog.list_grants(dataset.id)
    if not can_view(principal, dataset, grants, now):
        raise NotVisible("No such dataset.")
    return dataset, grants


async def administered_dataset(
    catalog: Catalog, principal: Principal, dataset_id: str, now: datetime
) -> tuple[Dataset, Sequence[Grant]]:
    """The dataset if the principal administers it; visible but not theirs is ``forbidden``."""
    dataset, grants = await visible_dataset(catalog, principal, dataset_id, now)
    if not can_administer(principal, dataset):
        raise Forbidden(
            "Only the dataset's owner or an organisation admin may do this.",
            hint="Ask the owner or an admin of the organisation.",
        )
    return dataset, grants


async def policy_for(catalog: Catalog, dataset: Dataset) -> DownloadPolicy:
    """The effective policy of a dataset: its organisation's tightened by its own."""
    base = await catalog.get_policy(dataset.organization_id) or DEFAULT_POLICY
    return effective_policy(base, await catalog.get_dataset_policy(dataset.id))


async def prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield ``head`` and then everything left in ``rest``."""
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def read_head(stream: AsyncIterable[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """Take at least ``size`` leading bytes (fewer if the stream ends) and the rest of it."""
    iterator = aiter(stream)
    parts: list[bytes] = []
    taken = 0
    while taken < size:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        parts.append(chunk)
        taken += len(chunk)
    return b"".join(parts), iterator


async def check_rate(
    usage: UsageStore, limit: RateLimit | None, key: str, now: datetime
) -> tuple[RateDecision | None, dict[str, str]]:
    """Apply a GCRA limit to ``key``: the decision and its RateLimit header fields.

    The state changes by compare-and-set, so concurrent workers never both take the
    last slot; a key still contended after many retries counts as over its limit.
    """
    if limit is None:
        return None, {}
    moment = now.timestamp()
    for attempt in range(_CAS_ATTEMPTS):
        if attempt:
            # Another worker changed the state between our read and write: back off a
            # little so a crowd of contenders spreads out instead of colliding again.
            await asyncio.sleep(min(0.02, 0.0005 * attempt))
        tat = await usage.get_tat(key)
        decision = gcra(limit, tat, moment)
        if not decision.allowed or decision.new_tat is None:
            return decision, ratelimit_fields(limit, decision)
        expires = decision.new_tat + limit.per_seconds
        if await usage.compare_and_set_tat(key, tat, decision.new_tat, expires_at=expires):
            return decision, ratelimit_fields(limit, decision)
    interval = limit.emission_interval
    denied = RateDecision(False, None, limit.requests, 0, interval, interval)
    return denied, ratelimit_fields(limit, denied)


async def live_datasets(catalog: Catalog) -> AsyncIterator[Dataset]:
    """Every dataset that is not deleted, page by page, for jobs that visit them all."""
    orgs = frozenset(o.id for o in await catalog.list_organizations())
    everyone = Audience(user_id=None, organization_ids=orgs, admin_organization_ids=orgs)
    after = None
    while True:
        page = await catalog.list_datasets(
            DatasetQuery(audience=everyone, limit=_WALK_PAGE, after=after)
        )
        for dataset in page:
            yield dataset
        if len(page) < _WALK_PAGE:
            return
        after = (page[-1].created_at, page[-1].id)


#: How often a read-modify-write of a dataset re-reads after losing a race.
_CHANGE_ATTEMPTS = 8


async def change_dataset(
    catalog: Catalog, dataset: Dataset, change: Callable[[Dataset], Dataset | None]
) -> Dataset:
    """Store ``change(current)`` only if nobody changed the dataset since it was read.

    ``dataset`` is the caller's read; after a lost race (``StaleWrite``) the dataset is read
    again and ``change`` applied to the fresh copy, so a concurrent write is never undone.
    ``change`` returns None to leave the dataset as it is. Returns what is stored.
    """
    current = dataset
    for _ in range(_CHANGE_ATTEMPTS):
        updated = change(current)
        if updated is None or updated == current:
            return current
        try:
            await catalog.update_dataset(updated, expected=current)
        except StaleWrite:
            current = await catalog.get_dataset(dataset.id)
            continue
        return updated
    raise StaleWrite(
        f"Dataset {dataset.id!r} kept changing while this change was made.",
        hint="Try again in a moment.",
    )
