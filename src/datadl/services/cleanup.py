"""Housekeeping: expired usage state, tokens, old audit rows, deleted datasets, old versions."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from datadl.domain.errors import FileMissing, NotFound
from datadl.ports.audit import AuditLog
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock
from datadl.ports.storage import BlobStore
from datadl.ports.usage import CleanupCounts, UsageStore
from datadl.services._shared import DEFAULT_POLICY, live_datasets
from datadl.services.derived import DERIVED_PREFIX, derived_folder, read_pointer


@attrs.frozen
class CleanupReport:
    """What one cleanup run removed."""

    usage: CleanupCounts
    tokens: int
    audit_records: int
    datasets: int
    versions: int
    files: int
    staged: int = 0
    derived: int = 0


#: How long a write may stay unfinished before cleanup takes its staged bytes for debris.
STAGED_WRITE_GRACE = timedelta(days=1)
#: A derived file younger than this is kept even when stale: a download may be reading it.
DERIVED_GRACE = timedelta(hours=1)


class CleanupService:
    """Removes what has outlived its use; safe to run on any schedule and concurrently.

    ``keep_versions`` is how many of a dataset's newest versions stay downloadable; older
    ones lose their stored file (None keeps every version). Derived files (conversions,
    Parquet derivatives, stored profiles) go once no live version has their content, or
    when they were made by another engine version than ``engine_version``.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        audit: AuditLog,
        usage: UsageStore,
        blobs: BlobStore,
        clock: Clock,
        keep_versions: int | None = 5,
        engine_version: str | None = None,
    ) -> None:
        if keep_versions is not None and keep_versions < 1:
            raise ValueError("keep_versions must keep at least the current version")
        self._catalog = catalog
        self._audit = audit
        self._usage = usage
        self._blobs = blobs
        self._clock = clock
        self._keep = keep_versions
        self._engine_version = engine_version

    async def run(self) -> CleanupReport:
        """Run every cleanup step once and report what went."""
        now = self._clock.now()
        usage = await self._usage.cleanup(now)
        tokens = await self._catalog.purge_tokens(now)
        records = 0
        for org in await self._catalog.list_organizations():
            policy = await self._catalog.get_policy(org.id) or DEFAULT_POLICY
            records += await self._audit.purge(
                org.id, now - timedelta(days=policy.audit_retention_days)
            )
        for dataset_id, own in await self._catalog.list_dataset_policies():
            if own.audit_retention_days is not None:
                cutoff = now - timedelta(days=own.audit_retention_days)
                records += await self._audit.purge_dataset(dataset_id, cutoff)
        files = datasets = versions = 0
        for dataset in await self._catalog.list_deleted_datasets():
            for version in await self._catalog.list_versions(dataset.id):
                if version.removed_at is None:
                    await self._blobs.delete(version.file.storage_key)
                    files += 1
            await self._catalog.purge_dataset(dataset.id)
            datasets += 1
        if self._keep is not None:
            removed, deleted_files = await self._trim_versions(now)
            versions += removed
            files += deleted_files
        staged = await self._blobs.purge_staged(now - STAGED_WRITE_GRACE)
        derived = await self._purge_derived(now)
        return CleanupReport(usage, tokens, records, datasets, versions, files, staged, derived)

    async def _purge_derived(self, now: datetime) -> int:
        """Remove derived files of content no live version holds, or of another engine."""
        live: set[str] = set()
        async for dataset in live_datasets(self._catalog):
            for version in await self._catalog.list_versions(dataset.id):
                if version.removed_at is None:
                    live.add(version.file.sha256)
        removed = 0
        pointed: dict[str, str | None] = {}
        async for key in self._blobs.list(DERIVED_PREFIX):
            parts = key.removeprefix(DERIVED_PREFIX).split("/")
            sha256 = parts[0]
            current = self._engine_version is None or key.startswith(
                derived_folder(sha256, self._engine_version) + "/"
            )
            if sha256 in live and current:
                if len(parts) != 4:
                    continue  # a pointer or a stored profile
                # <sha256>/<engine>/<variant>/<file>: kept only if its pointer names it; a
                # conversion that lost a race between workers leaves one nobody names.
                base = key.rpartition("/")[0]
                if base not in pointed:
                    blob = await read_pointer(self._blobs, base)
                    pointed[base] = None if blob is None else blob.key
                if pointed[base] == key:
                    continue
            try:
                modified = (await self._blobs.stat(key)).modified_at
            except FileMissing:
                continue
            if modified is not None and modified > now - DERIVED_GRACE:
                continue
            await self._blobs.delete(key)
            removed += 1
        return removed

    async def _trim_versions(self, now: datetime) -> tuple[int, int]:
        assert self._keep is not None
        removed = 0
        async for dataset in live_datasets(self._catalog):
            live = [
                v for v in await self._catalog.list_versions(dataset.id) if v.removed_at is None
            ]
            for version in live[: max(0, len(live) - self._keep)]:
                if version.number == dataset.version:
                    continue
                # The catalogue first: a version marked removed is never served again, and
                # a file left behind by a crash in between is only wasted space.
                try:
                    await self._catalog.update_version(attrs.evolve(version, removed_at=now))
                except NotFound:
                    continue
                await self._blobs.delete(version.file.storage_key)
                removed += 1
        return removed, removed
