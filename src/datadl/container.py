"""The composition root: adapters chosen from configuration URLs, wired into the services.

Only entrypoints and tests use this module; the core never imports it.
"""

from __future__ import annotations

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
from datadl.wiring import bootstrap

#: Configuration of a process that keeps everything in memory.
MEMORY_DEFAULTS = {
    "database_url": "memory://",
    "storage_url": "memory://",
    "cache_url": "memory://",
    "usage_url": None,
    "max_upload_bytes": None,
    "keep_versions": 5,
}


def scheme(url: str | None) -> str:
    """The adapter family a URL names: its scheme without a driver suffix."""
    if not url:
        return "memory"
    found = urlsplit(url).scheme.split("+", 1)[0]
    if not found:
        raise ValueError(f"not a URL: {url!r}")
    return found


class Container(containers.DeclarativeContainer):
    """Adapters by URL scheme, and the service facade built over them.

    ``usage_url`` defaults to the database: the hot counters live where the catalogue
    lives unless pointed at a faster store.
    """

    config = providers.Configuration(default=MEMORY_DEFAULTS)

    clock = providers.Singleton(SystemClock)
    entropy = providers.Singleton(SystemEntropy)
    keys = providers.Singleton(StaticKeyRing.generate)

    catalog = providers.Selector(
        providers.Callable(scheme, config.database_url),
        memory=providers.Singleton(MemoryCatalog),
    )
    audit_log = providers.Selector(
        providers.Callable(scheme, config.database_url),
        memory=providers.Singleton(MemoryAuditLog),
    )
    usage = providers.Selector(
        providers.Callable(lambda u, d: scheme(u or d), config.usage_url, config.database_url),
        memory=providers.Singleton(MemoryUsageStore),
    )
    cache = providers.Selector(
        providers.Callable(scheme, config.cache_url),
        memory=providers.Singleton(MemoryCache),
    )
    blobs = providers.Selector(
        providers.Callable(scheme, config.storage_url),
        memory=providers.Singleton(MemoryBlobStore),
    )

    app = providers.Singleton(
        bootstrap,
        catalog=catalog,
        blobs=blobs,
        audit_log=audit_log,
        usage=usage,
        cache=cache,
        clock=clock,
        keys=keys,
        entropy=entropy,
        max_upload_bytes=config.max_upload_bytes,
        keep_versions=config.keep_versions,
    )
