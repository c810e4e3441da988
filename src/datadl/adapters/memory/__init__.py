"""In-process adapters for every storage port: complete, correct and dependency-free."""

from datadl.adapters.memory.audit import MemoryAuditLog
from datadl.adapters.memory.cache import MemoryCache
from datadl.adapters.memory.catalog import MemoryCatalog
from datadl.adapters.memory.storage import MemoryBlobStore
from datadl.adapters.memory.usage import MemoryUsageStore

__all__ = [
    "MemoryAuditLog",
    "MemoryBlobStore",
    "MemoryCache",
    "MemoryCatalog",
    "MemoryUsageStore",
]
