"""The composition root: adapters chosen from configuration URLs, wired into the services.

Only entrypoints and tests use this module; the core never imports it. Adapter modules
with optional dependencies (asyncpg, redis) are imported only when their URL is chosen.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dependency_injector import containers, providers

from datadl.adapters.memory import (
    MemoryAuditLog,
    MemoryBlobStore,
    MemoryCache,
    MemoryCatalog,
    MemoryUsageStore,
)
from datadl.adapters.system import StaticKeyRing, SystemClock, SystemEntropy
from datadl.settings import Settings
from datadl.wiring import bootstrap

#: Configuration of a process that keeps everything in memory.
MEMORY_DEFAULTS: dict[str, Any] = {
    "database_url": "memory://",
    "database_schema": None,
    "storage_url": "memory://",
    "cache_url": None,
    "usage_url": None,
    "max_upload_bytes": None,
    "keep_versions": 5,
    # In memory there is nothing to save: no read cache, no write buffer.
    "catalog_cache_seconds": 0,
    "audit_flush_seconds": 0,
    "analyze": True,
    "s3_options": None,
}


def scheme(url: str | None) -> str:
    """The adapter family a URL names: its scheme without a driver suffix."""
    if not url:
        return "memory"
    found = urlsplit(url).scheme.split("+", 1)[0]
    if not found:
        raise ValueError(f"not a URL: {url!r}")
    return "postgresql" if found == "postgres" else found


def _sql_database(url: str, schema: str | None) -> Any:
    from datadl.adapters.sql import SqlDatabase

    return SqlDatabase.from_url(url, schema=schema)


def _sql(kind: str, db: Any) -> Any:
    from datadl.adapters import sql

    return getattr(sql, kind)(db)


def _fsspec(url: str, s3_options: dict[str, Any] | None = None) -> Any:
    from datadl.adapters.storage import FsspecBlobStore

    return FsspecBlobStore.from_url(url, s3_options=s3_options or None)


def _tables(blobs: Any, clock: Any) -> Any:
    from datadl.adapters.tables import ArrowTableEngine

    return ArrowTableEngine(blobs, clock=clock)


def _redis(kind: str, url: str) -> Any:
    import datadl.adapters.redis as redis_adapters

    return getattr(redis_adapters, kind).from_url(url)


def _cached_catalog(catalog: Any, seconds: float) -> Any:
    from datadl.adapters.readcache import CachedCatalog

    return CachedCatalog(catalog, ttl=seconds) if seconds else catalog


def _fresh_catalog(cached: Any) -> Any:
    fresh = getattr(cached, "fresh", None)
    return cached if fresh is None else fresh()


def _buffered_audit(audit_log: Any, seconds: float) -> Any:
    from datadl.adapters.writebehind import BufferedAuditLog

    return BufferedAuditLog(audit_log, interval=seconds) if seconds else audit_log


class Container(containers.DeclarativeContainer):
    """Adapters by URL scheme, and the service facade built over them.

    The usage store (rate limits, quotas, token uses) lives in the database unless
    ``usage_url`` points at Redis; the cache is in process unless ``cache_url`` says
    otherwise. The table engine is pyarrow over the blob store; with ``analyze`` (the
    default) every publication is analysed in the background, so the server must await
    ``app.insight.aclose()`` on shutdown.
    """

    config = providers.Configuration(default=MEMORY_DEFAULTS)

    clock = providers.Singleton(SystemClock)
    entropy = providers.Singleton(SystemEntropy)
    keys = providers.Singleton(StaticKeyRing.generate)

    database = providers.Singleton(_sql_database, config.database_url, config.database_schema)
    _database_kind = providers.Callable(scheme, config.database_url)

    catalog = providers.Selector(
        _database_kind,
        memory=providers.Singleton(MemoryCatalog),
        sqlite=providers.Singleton(_sql, "SqlCatalog", database),
        postgresql=providers.Singleton(_sql, "SqlCatalog", database),
    )
    audit_log = providers.Selector(
        _database_kind,
        memory=providers.Singleton(MemoryAuditLog),
        sqlite=providers.Singleton(_sql, "SqlAuditLog", database),
        postgresql=providers.Singleton(_sql, "SqlAuditLog", database),
    )
    # What the services see: downloads read their decisions through a short cache of the
    # catalogue, everything else reads it fresh (writes through either empty the cache);
    # the audit log sits behind a write buffer. Each is left out when its setting is 0.
    download_catalog = providers.Singleton(_cached_catalog, catalog, config.catalog_cache_seconds)
    served_catalog = providers.Singleton(_fresh_catalog, download_catalog)
    served_audit_log = providers.Singleton(_buffered_audit, audit_log, config.audit_flush_seconds)
    usage = providers.Selector(
        providers.Callable(
            lambda usage_url, db_url: scheme(usage_url or db_url),
            config.usage_url,
            config.database_url,
        ),
        memory=providers.Singleton(MemoryUsageStore),
        sqlite=providers.Singleton(_sql, "SqlUsageStore", database),
        postgresql=providers.Singleton(_sql, "SqlUsageStore", database),
        redis=providers.Singleton(_redis, "RedisUsageStore", config.usage_url),
    )
    cache = providers.Selector(
        providers.Callable(scheme, config.cache_url),
        memory=providers.Singleton(MemoryCache),
        sqlite=providers.Singleton(_sql, "SqlCache", database),
        postgresql=providers.Singleton(_sql, "SqlCache", database),
        redis=providers.Singleton(_redis, "RedisCache", config.cache_url),
    )
    blobs = providers.Selector(
        providers.Callable(scheme, config.storage_url),
        memory=providers.Singleton(MemoryBlobStore),
        file=providers.Singleton(_fsspec, config.storage_url),
        s3=providers.Singleton(_fsspec, config.storage_url, config.s3_options),
    )

    tables = providers.Singleton(_tables, blobs, clock)

    app = providers.Singleton(
        bootstrap,
        catalog=served_catalog,
        blobs=blobs,
        audit_log=served_audit_log,
        usage=usage,
        cache=cache,
        clock=clock,
        keys=keys,
        entropy=entropy,
        tables=tables,
        max_upload_bytes=config.max_upload_bytes,
        keep_versions=config.keep_versions,
        analyze=config.analyze,
        download_reads=download_catalog,
    )


def build_container(settings: Settings) -> Container:
    """A container configured from settings: the embedded defaults where they say nothing.

    The database defaults to a SQLite file and the files to a folder, both under
    ``settings.data_dir``; tokens and cursors are signed with the configured keys (a
    fresh random ring when none are configured, valid for this process only).
    """
    data_dir = settings.data_dir.resolve()
    container = Container()
    container.config.from_dict(
        {
            "database_url": settings.effective_database_url,
            "database_schema": settings.database_schema,
            "storage_url": settings.storage_url or f"file://{data_dir / 'files'}",
            "cache_url": settings.cache_url,
            "usage_url": settings.usage_url,
            "max_upload_bytes": settings.max_upload_bytes,
            "keep_versions": settings.keep_versions,
            "catalog_cache_seconds": settings.catalog_cache_seconds,
            "audit_flush_seconds": settings.audit_flush_seconds,
            "analyze": True,
            "s3_options": settings.s3_options,
        }
    )
    if settings.signing_keys:
        cursor_key = settings.cursor_key or settings.signing_keys[-1].secret
        container.keys.override(providers.Object(StaticKeyRing(settings.signing_keys, cursor_key)))
    return container
