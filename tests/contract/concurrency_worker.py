"""One OS process of the cross-process concurrency tests: hammer a shared usage store.

Run as ``python -m tests.contract.concurrency_worker BACKEND URL NAMESPACE KIND N START``;
prints a JSON line with how many of its N attempts were admitted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from datadl.domain.policy import QuotaLimit, Window
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.domain.ratelimit import RateLimit
from datadl.services._shared import check_rate

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
#: What the shared resource admits in total, whatever the number of processes.
CAPACITY = 37
AMOUNT = 100


async def open_store(backend: str, url: str, namespace: str) -> tuple[Any, Any]:
    """The usage store under test and the object to close afterwards."""
    if backend == "redis":
        from datadl.adapters.redis import RedisUsageStore

        store = RedisUsageStore.from_url(url, prefix=namespace)
        return store, store
    from datadl.adapters.sql import SqlDatabase, SqlUsageStore

    db = SqlDatabase.from_url(url, schema=namespace or None)
    return SqlUsageStore(db), db


async def attempt(store: Any, kind: str, index: int, tag: str) -> bool:
    if kind == "quota":
        charge = QuotaCharge.for_subject(
            QuotaSubject.USER,
            "shared-user",
            QuotaLimit(bytes=CAPACITY * AMOUNT, window=Window.DAY),
            NOW,
            organization_id="org",
        )
        reservation = Reservation(
            id=f"{tag}-{index}",
            charges=(charge,),
            bytes=AMOUNT,
            downloads=0,
            expires_at=NOW + timedelta(hours=1),
        )
        return bool((await store.reserve(reservation)).ok)
    if kind == "rate":
        decision, _ = await check_rate(store, RateLimit(CAPACITY, 3600), "rate:shared", NOW)
        return bool(decision is not None and decision.allowed)
    if kind == "token":
        use = await store.use_token(
            "shared-token",
            f"session-{tag}-{index}",
            max_uses=CAPACITY,
            now=NOW,
            idle_seconds=60,
            expires_at=NOW + timedelta(hours=1),
        )
        return bool(use.allowed)
    raise ValueError(kind)


async def main(backend: str, url: str, namespace: str, kind: str, n: int, start: float) -> None:
    store, closer = await open_store(backend, url, namespace)
    try:
        # Both processes wait for the same wall-clock instant so their attempts overlap.
        await asyncio.sleep(max(0.0, start - time.time()))
        tag = f"p{id(store)}-{time.monotonic_ns()}"
        results = await asyncio.gather(*(attempt(store, kind, i, tag) for i in range(n)))
    finally:
        if hasattr(closer, "aclose"):
            await closer.aclose()
        else:
            await closer.dispose()
    print(json.dumps({"admitted": sum(results), "attempts": n}))


if __name__ == "__main__":
    b, u, ns, k, count, when = sys.argv[1:7]
    asyncio.run(main(b, u, ns, k, int(count), float(when)))
