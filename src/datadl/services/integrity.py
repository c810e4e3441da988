"""Integrity checks: re-hash stored files and flag the datasets whose bytes went wrong."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import attrs

from datadl.domain.errors import FileMissing, StorageUnavailable
from datadl.domain.model import Dataset, DatasetVersion
from datadl.ports.catalog import Catalog
from datadl.ports.storage import BlobStore
from datadl.services._shared import change_dataset, live_datasets


@attrs.frozen
class VerifyResult:
    """The outcome for one stored version: ``ok``, ``missing``, ``corrupted`` or ``unreachable``."""

    dataset_id: str
    version: int
    outcome: str
    detail: str = ""


class IntegrityService:
    """Re-reads every stored version, compares size and SHA-256 with the catalogue, and
    flags the dataset of any mismatch (its downloads then fail with ``file_corrupted``)."""

    def __init__(self, *, catalog: Catalog, blobs: BlobStore) -> None:
        self._catalog = catalog
        self._blobs = blobs

    async def verify(self) -> AsyncIterator[VerifyResult]:
        """Check every live version of every dataset, yielding one result each as it goes."""
        async for dataset in live_datasets(self._catalog):
            for version in await self._catalog.list_versions(dataset.id):
                if version.removed_at is None:
                    yield await self.verify_version(dataset, version)

    async def verify_version(self, dataset: Dataset, version: DatasetVersion) -> VerifyResult:
        """Hash one stored version in bounded memory and flag its dataset on a mismatch."""
        file = version.file
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in self._blobs.read(file.storage_key):
                digest.update(chunk)
                size += len(chunk)
        except FileMissing:
            return await self._flag(dataset, version, "missing", "the stored file is gone")
        except StorageUnavailable as exc:
            # Not the file's fault: report it, flag nothing.
            return VerifyResult(dataset.id, version.number, "unreachable", exc.message)
        if size != file.size_bytes:
            why = f"size {size} differs from the recorded {file.size_bytes}"
            return await self._flag(dataset, version, "corrupted", why)
        if digest.hexdigest() != file.sha256:
            return await self._flag(dataset, version, "corrupted", "sha256 mismatch")
        return VerifyResult(dataset.id, version.number, "ok")

    async def _flag(
        self, dataset: Dataset, version: DatasetVersion, outcome: str, why: str
    ) -> VerifyResult:
        reason = f"version {version.number}: {why}"

        def change(fresh: Dataset) -> Dataset | None:
            # Only the current file's state shows on the dataset; the result names the rest.
            if (fresh.version, fresh.file.sha256) != (version.number, version.file.sha256):
                return None
            return attrs.evolve(fresh, corrupted_reason=reason)

        current = await self._catalog.get_dataset(dataset.id)
        await change_dataset(self._catalog, current, change)
        return VerifyResult(dataset.id, version.number, outcome, why)
