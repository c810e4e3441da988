"""Every port's contract suite in one place, for ``from datadl.testing.contracts import ...``."""

from __future__ import annotations

from datadl.testing.audit import AuditLogContract
from datadl.testing.cache import CacheContract
from datadl.testing.catalog import CatalogContract
from datadl.testing.storage import BlobStoreContract
from datadl.testing.usage import UsageStoreContract

__all__ = [
    "AuditLogContract",
    "BlobStoreContract",
    "CacheContract",
    "CatalogContract",
    "UsageStoreContract",
]
