"""Contract suites and agreement state machines that check any adapter against its port.

This package imports pytest and hypothesis, which are test dependencies
(``pip install datadl[test]``); nothing else in datadl imports it. To test an adapter of
your own, subclass a suite in a test module and provide its one fixture::

    class TestMyCatalog(CatalogContract):
        @pytest.fixture
        async def catalog(self):
            return MyCatalog(...)

Call ``pytest.register_assert_rewrite("datadl.testing")`` in your ``conftest.py``
before importing the suites to get detailed assertion messages.
"""

from __future__ import annotations

from datadl.testing.contracts import (
    AuditLogContract,
    BlobStoreContract,
    CacheContract,
    CatalogContract,
    UsageStoreContract,
)
from datadl.testing.statemachines import catalog_agreement, usage_store_agreement

__all__ = [
    "AuditLogContract",
    "BlobStoreContract",
    "CacheContract",
    "CatalogContract",
    "UsageStoreContract",
    "catalog_agreement",
    "usage_store_agreement",
]
