"""Download history, analytics for owners, and each user's quota usage."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from datadl.domain.access import Principal
from datadl.domain.accounting import Analytics, DownloadRecord, DownloadStatus, downloader_key
from datadl.domain.cursors import decode_cursor, encode_cursor
from datadl.domain.errors import BadRequest, InvalidCursor
from datadl.domain.model import Scope
from datadl.domain.policy import QuotaLimit
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Usage
from datadl.ports.audit import AuditLog, HistoryQuery
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock, KeyRing
from datadl.ports.usage import UsageStore
from datadl.services._shared import (
    DEFAULT_POLICY,
    administered_dataset,
    require_scope,
    require_user,
)

MAX_HISTORY_PAGE = 200
MAX_ANALYTICS_DAYS = 366


@attrs.frozen
class HistoryPage:
    """A page of download records, newest first, and the next page's cursor."""

    items: tuple[DownloadRecord, ...]
    next_cursor: str | None


@attrs.frozen
class QuotaStatus:
    """One quota counter as its user sees it."""

    organization_id: str
    organization: str
    subject: QuotaSubject
    limit: QuotaLimit
    used: Usage
    resets_at: datetime


class AuditService:
    """Read-side of the audit trail: history pages, analytics and quota usage."""

    def __init__(
        self, *, catalog: Catalog, audit: AuditLog, usage: UsageStore, clock: Clock, keys: KeyRing
    ) -> None:
        self._catalog = catalog
        self._audit = audit
        self._usage = usage
        self._clock = clock
        self._keys = keys

    async def history(
        self,
        principal: Principal,
        dataset_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: DownloadStatus | None = None,
    ) -> HistoryPage:
        """A dataset's download records, newest first (owner and organisation admins)."""
        require_scope(principal, Scope.READ)
        dataset, _ = await administered_dataset(
            self._catalog, principal, dataset_id, self._clock.now()
        )
        return await self._page(HistoryQuery(dataset_id=dataset.id, status=status), limit, cursor)

    async def my_history(
        self,
        principal: Principal,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: DownloadStatus | None = None,
    ) -> HistoryPage:
        """The principal's own download records, newest first."""
        user_id = require_user(principal)
        return await self._page(HistoryQuery(principal_id=user_id, status=status), limit, cursor)

    async def _page(self, query: HistoryQuery, limit: int, cursor: str | None) -> HistoryPage:
        if not 1 <= limit <= MAX_HISTORY_PAGE:
            raise BadRequest(
                f"limit must be between 1 and {MAX_HISTORY_PAGE}.", hint="Use ?limit=50."
            )
        fingerprint = hashlib.sha256(
            repr((query.dataset_id, query.principal_id, query.status)).encode()
        ).hexdigest()[:16]
        before = None
        if cursor is not None:
            values = decode_cursor(cursor, self._keys.cursor_key())
            at, last_id = values.get("t"), values.get("i")
            if values.get("f") != fingerprint:
                raise InvalidCursor("The cursor belongs to another listing.")
            if not isinstance(at, str) or not isinstance(last_id, str):
                raise InvalidCursor("The cursor is incomplete.")
            before = (datetime.fromisoformat(at), last_id)
        found = await self._audit.history(attrs.evolve(query, limit=limit + 1, before=before))
        items = tuple(found[:limit])
        next_cursor = None
        if len(found) > limit:
            last = items[-1]
            next_cursor = encode_cursor(
                {"t": last.started_at.isoformat(), "i": last.id, "f": fingerprint},
                self._keys.cursor_key(),
            )
        return HistoryPage(items, next_cursor)

    async def analytics(
        self, principal: Principal, dataset_id: str, *, days: int = 30
    ) -> Analytics:
        """Totals and per-day series over the last ``days`` UTC days, today included."""
        require_scope(principal, Scope.READ)
        if not 1 <= days <= MAX_ANALYTICS_DAYS:
            raise BadRequest(
                f"days must be between 1 and {MAX_ANALYTICS_DAYS}.", hint="Use ?days=30."
            )
        now = self._clock.now()
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, now)
        until = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return await self._audit.analytics(
            dataset.id, since=until - timedelta(days=days), until=until
        )

    async def quota(
        self, principal: Principal, client_address: str | None = None
    ) -> Sequence[QuotaStatus]:
        """The principal's usage against every organisation quota that applies to them.

        Shows the user quota of every organisation whose policy sets one, and the
        organisation quota of the organisations the user belongs to.
        """
        now = self._clock.now()
        downloader = downloader_key(principal.user_id, client_address)
        wanted: list[tuple[str, str, QuotaSubject, QuotaLimit, QuotaCharge]] = []
        for org in await self._catalog.list_organizations():
            policy = await self._catalog.get_policy(org.id) or DEFAULT_POLICY
            if policy.user_quota is not None and not policy.user_quota.unlimited:
                charge = QuotaCharge.for_subject(
                    QuotaSubject.USER, downloader, policy.user_quota, now, organization_id=org.id
                )
                wanted.append((org.id, org.slug, QuotaSubject.USER, policy.user_quota, charge))
            quota = policy.organization_quota
            if principal.role_in(org.id) is not None and quota is not None and not quota.unlimited:
                charge = QuotaCharge.for_subject(
                    QuotaSubject.ORGANIZATION, org.id, quota, now, organization_id=org.id
                )
                wanted.append((org.id, org.slug, QuotaSubject.ORGANIZATION, quota, charge))
        used = await self._usage.usage([w[4].key for w in wanted])
        return tuple(
            QuotaStatus(org_id, slug, subject, limit, usage, charge.window_end)
            for (org_id, slug, subject, limit, charge), usage in zip(wanted, used, strict=True)
        )
