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
from datadl.ports.tables import TableEngine
from datadl.services.accounts import AccountService
from datadl.services.audit import AuditService
from datadl.services.cleanup import CleanupService
from datadl.services.datasets import DatasetService
from datadl.services.derived import DerivedFiles
from datadl.services.downloads import Deriver, DownloadService
from datadl.services.insight import InsightService
from datadl.services.integrity import IntegrityService
from datadl.services.tokens import TokenService


@attrs.frozen
class Datadl:
    """Every use case of datadl, wired to one set of adapters.

    This is the embedding API: each attribute is a service whose async methods take a
    ``Principal`` and return domain values. The adapters are kept for embedders who
    need to reach them (to run cleanup on a schedule, to close connections). Await
    ``insight.aclose()`` (or ``insight.drain()``) before the event loop ends: analyses
    and conversions run as background tasks.
    """

    accounts: AccountService
    datasets: DatasetService
    downloads: DownloadService
    tokens: TokenService
    audit: AuditService
    cleanup: CleanupService
    integrity: IntegrityService
    insight: InsightService
    derived: DerivedFiles
    catalog: Catalog
    blobs: BlobStore
    audit_log: AuditLog
    usage: UsageStore
    cache: Cache
    clock: Clock
    keys: KeyRing
    entropy: Entropy
    tables: TableEngine


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
    tables: TableEngine | None = None,
    deriver: Deriver | None = None,
    max_upload_bytes: int | None = None,
    keep_versions: int | None = 5,
    analyze: bool = False,
    download_reads: Catalog | None = None,
) -> Datadl:
    """Build every service over the given adapters; anything left out (None) is in memory.

    In-memory adapters keep nothing past the process, and a generated key ring makes
    tokens and cursors valid for this process only: pass a ``StaticKeyRing`` with
    stored secrets to keep them valid across restarts. ``tables`` defaults to the
    pyarrow engine over ``blobs``; converted downloads go through the derived-file cache
    unless another ``deriver`` is given. With ``analyze`` every publication starts a
    background analysis. ``download_reads`` is what downloads read their decisions from
    (default ``catalog``; the server passes a short-lived cache of it).
    """
    catalog = MemoryCatalog() if catalog is None else catalog
    blobs = MemoryBlobStore() if blobs is None else blobs
    audit_log = MemoryAuditLog() if audit_log is None else audit_log
    usage = MemoryUsageStore() if usage is None else usage
    cache = MemoryCache() if cache is None else cache
    clock = SystemClock() if clock is None else clock
    keys = StaticKeyRing.generate() if keys is None else keys
    entropy = SystemEntropy() if entropy is None else entropy
    if tables is None:
        # Imported here so that importing datadl does not load pyarrow.
        from datadl.adapters.tables import ArrowTableEngine

        tables = ArrowTableEngine(blobs, clock=clock)
    derived = DerivedFiles(
        catalog=catalog, blobs=blobs, engine=tables, entropy=entropy, cache=cache
    )
    insight = InsightService(
        catalog=catalog, cache=cache, engine=tables, clock=clock, derived=derived, blobs=blobs
    )
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
            on_published=lambda dataset: insight.schedule(dataset.id, dataset.version),
        ),
        downloads=DownloadService(
            catalog=catalog,
            blobs=blobs,
            audit=audit_log,
            usage=usage,
            clock=clock,
            entropy=entropy,
            keys=keys,
            deriver=deriver or derived,
            reads=download_reads,
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
            engine_version=tables.version,
        ),
        integrity=IntegrityService(catalog=catalog, blobs=blobs),
        insight=insight,
        derived=derived,
        catalog=catalog,
        blobs=blobs,
        audit_log=audit_log,
        usage=usage,
        cache=cache,
        clock=clock,
        keys=keys,
        entropy=entropy,
        tables=tables,
    )
