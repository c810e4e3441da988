"""Wire the core by hand, no container needed: ``datadl.bootstrap()`` for embedders."""

from __future__ import annotations

import attrs

from datadl.adapters.memory import (
    MemoryAuditLog,
    MemoryBlobStore,
    MemoryCache,
    MemoryCatalog,
    MemoryUsageStore,
)
from datadl.adapters.system import StaticKeyRing, SystemClock, SystemEntropy
from datadl.ports import AuditLog, BlobStore, Cache, Catalog, Clock, Entropy, KeyRing, UsageStore
from datadl.services.accounts import AccountService
from datadl.services.audit import AuditService
from datadl.services.cleanup import CleanupService
from datadl.services.datasets import DatasetService
from datadl.services.downloads import Deriver, DownloadService
from datadl.services.integrity import IntegrityService
from datadl.services.tokens import TokenService


@attrs.frozen
class Datadl:
    """Every use case of datadl, wired to one set of adapters.

    This is the embedding API: each attribute is a service whose async methods take a
    ``Principal`` and return domain values. The adapters are kept for embedders who
    need to reach them (to run cleanup on a schedule, to close connections).
    """

    accounts: AccountService
    datasets: DatasetService
    downloads: DownloadService
    tokens: TokenService
    audit: AuditService
    cleanup: CleanupService
    integrity: IntegrityService
    catalog: Catalog
    blobs: BlobStore
    audit_log: AuditLog
    usage: UsageStore
    cache: Cache
    clock: Clock
    keys: KeyRing
    entropy: Entropy


def bootstrap(
    *,
    catalog: Catalog | None = None,
    blobs: BlobStore | None = None,
    audit_log: AuditLog | None = None,
    usage: UsageStore | None = None,
    cache: Cache | None = None,
    clock: Clock | None = None,
    keys: KeyRing | None = None,
    entropy: Entropy | None = None,
    deriver: Deriver | None = None,
    max_upload_bytes: int | None = None,
    keep_versions: int | None = 5,
    analyze: bool = False,
) -> Datadl:
    """Build every service over the given adapters; anything left out is in memory.

    In-memory adapters keep nothing past the process, and a generated key ring makes
    tokens and cursors valid for this process only: pass a ``StaticKeyRing`` with
    stored secrets to keep them valid across restarts.
    """
    catalog = catalog or MemoryCatalog()
    blobs = blobs or MemoryBlobStore()
    audit_log = audit_log or MemoryAuditLog()
    usage = usage or MemoryUsageStore()
    cache = cache or MemoryCache()
    clock = clock or SystemClock()
    keys = keys or StaticKeyRing.generate()
    entropy = entropy or SystemEntropy()
    return Datadl(
        accounts=AccountService(catalog=catalog, clock=clock, entropy=entropy),
        datasets=DatasetService(
            catalog=catalog,
            blobs=blobs,
            clock=clock,
            entropy=entropy,
            keys=keys,
            max_upload_bytes=max_upload_bytes,
            analyze=analyze,
        ),
        downloads=DownloadService(
            catalog=catalog,
            blobs=blobs,
            audit=audit_log,
            usage=usage,
            clock=clock,
            entropy=entropy,
            keys=keys,
            deriver=deriver,
        ),
        tokens=TokenService(catalog=catalog, usage=usage, clock=clock, entropy=entropy, keys=keys),
        audit=AuditService(catalog=catalog, audit=audit_log, usage=usage, clock=clock, keys=keys),
        cleanup=CleanupService(
            catalog=catalog,
            audit=audit_log,
            usage=usage,
            blobs=blobs,
            clock=clock,
            keep_versions=keep_versions,
        ),
        integrity=IntegrityService(catalog=catalog, blobs=blobs),
        catalog=catalog,
        blobs=blobs,
        audit_log=audit_log,
        usage=usage,
        cache=cache,
        clock=clock,
        keys=keys,
        entropy=entropy,
    )
