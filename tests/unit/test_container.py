"""The composition root builds the services from configuration URLs."""

from __future__ import annotations

import pytest

from datadl.adapters.memory import MemoryBlobStore, MemoryCatalog
from datadl.container import Container, scheme


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
