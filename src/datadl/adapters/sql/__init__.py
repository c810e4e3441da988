"""SQL adapters on SQLAlchemy 2 async: SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from datadl.adapters.sql.audit import SqlAuditLog
from datadl.adapters.sql.cache import SqlCache
from datadl.adapters.sql.catalog import SqlCatalog
from datadl.adapters.sql.database import SqlDatabase, translate_errors
from datadl.adapters.sql.usage import SqlUsageStore

__all__ = [
    "SqlAuditLog",
    "SqlCache",
    "SqlCatalog",
    "SqlDatabase",
    "SqlUsageStore",
    "translate_errors",
]
