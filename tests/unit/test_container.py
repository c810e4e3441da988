"""The composition root builds the services from configuration URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadl.adapters.memory import MemoryBlobStore, MemoryCatalog
from datadl.adapters.readcache import CachedCatalog
from datadl.adapters.sql import SqlAuditLog, SqlCatalog
from datadl.adapters.writebehind import BufferedAuditLog
from datadl.container import Container, build_container, scheme
from datadl.settings import ConfigError, Settings


def test_default_container_wires_memory_adapters_once() -> None:
    """With no configuration every port is in memory, and services share one instance each."""
    container = Container()
    app = container.app()
    assert isinstance(app.catalog, MemoryCatalog)
    assert isinstance(app.blobs, MemoryBlobStore)
    assert container.app() is app
    assert app.datasets._catalog is app.downloads._catalog is app.catalog


def test_unknown_url_scheme_is_refused() -> None:
    """A database URL naming no known adapter fails loudly instead of falling back."""
    container = Container()
    container.config.database_url.from_value("mysql://localhost/x")
    with pytest.raises(Exception, match="mysql"):
        container.catalog()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "memory"),
        ("memory://", "memory"),
        ("sqlite+aiosqlite:///x.db", "sqlite"),
        ("postgresql+asyncpg://h/db", "postgresql"),
        ("s3://bucket/prefix", "s3"),
    ],
)
def test_scheme_names_the_adapter_family(url: str | None, expected: str) -> None:
    """Driver suffixes are ignored when picking an adapter family."""
    assert scheme(url) == expected


def test_scheme_rejects_a_bare_path() -> None:
    """A path without a scheme is not a URL."""
    with pytest.raises(ValueError, match="not a URL"):
        scheme("/var/data")


def test_settings_put_the_catalogue_behind_a_cache_and_the_audit_log_behind_a_buffer(
    tmp_path: Path,
) -> None:
    """On a database the services share one cached catalogue and one buffered audit log;
    a setting of 0 leaves either out."""
    container = build_container(Settings(data_dir=tmp_path))
    app = container.app()
    # Downloads read their decisions through the cache; every other read is fresh.
    reads = app.downloads._reads
    assert isinstance(reads, CachedCatalog) and reads.reads_cached
    assert isinstance(app.catalog, CachedCatalog) and not app.catalog.reads_cached
    assert app.catalog.inner is reads.inner
    assert isinstance(app.catalog.inner, SqlCatalog)
    assert isinstance(app.audit_log, BufferedAuditLog)
    assert app.datasets._catalog is app.downloads._catalog is app.tokens._catalog is app.catalog
    assert app.downloads._audit is app.audit._audit is app.audit_log
    plain = build_container(
        Settings(data_dir=tmp_path, catalog_cache_seconds=0, audit_flush_seconds=0)
    ).app()
    assert isinstance(plain.catalog, SqlCatalog)
    assert plain.downloads._reads is plain.catalog
    assert isinstance(plain.audit_log, SqlAuditLog)


@pytest.mark.parametrize(
    ("name", "value"), [("catalog_cache_seconds", "soon"), ("audit_flush_seconds", "-1")]
)
def test_cache_and_buffer_settings_must_be_seconds(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.load(environ={f"DATADL_{name.upper()}": value})
