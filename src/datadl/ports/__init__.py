"""The ports: what the core needs from the world, as typing.Protocols."""

from datadl.ports.audit import AuditLog, HistoryQuery
from datadl.ports.cache import Cache
from datadl.ports.catalog import Audience, Catalog, DatasetQuery
from datadl.ports.clock import Clock, Entropy, KeyRing
from datadl.ports.storage import BlobStat, BlobStore, StoredBlob
from datadl.ports.tables import ConvertOptions, TableEngine
from datadl.ports.usage import CleanupCounts, TokenUse, UsageStore

__all__ = [
    "Audience",
    "AuditLog",
    "BlobStat",
    "BlobStore",
    "Cache",
    "Catalog",
    "CleanupCounts",
    "Clock",
    "ConvertOptions",
    "DatasetQuery",
    "Entropy",
    "HistoryQuery",
    "KeyRing",
    "StoredBlob",
    "TableEngine",
    "TokenUse",
    "UsageStore",
]
