"""Usage-store and audit benchmark: reserve+settle throughput and history-page latency.

    python benchmarks/usage_bench.py [--ops 2000] [--history-rows 1000000]

PostgreSQL and Redis are measured when DATADL_TEST_POSTGRES_URL / DATADL_TEST_REDIS_URL
are set (each run uses its own schema and key prefix, removed afterwards). The anchor of
each backend, measured in the same run, is its bare round trip (SELECT 1, PING, or a
no-op call in memory): the floor any atomic operation on it sits on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from datadl.adapters.memory import MemoryUsageStore
from datadl.domain.policy import QuotaLimit
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.ports.audit import HistoryQuery

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
USER = QuotaLimit(bytes=10**15, downloads=10**9)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(
    n: int, op: Callable[[int], Awaitable[Any]], tasks: int
) -> tuple[float, list[float]]:
    """Run ``n`` calls of ``op`` spread over ``tasks`` concurrent tasks: (ops/s, latencies)."""
    latencies: list[float] = []

    async def worker(first: int) -> None:
        for i in range(first, n, tasks):
            start = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(tasks)))
    return n / (time.perf_counter() - began), latencies


async def bench_store(
    name: str, store: Any, ping: Callable[[], Awaitable[Any]], ops: int
) -> list[tuple]:
    rows = []
    _, anchor = await timed(200, lambda _i: ping(), 1)
    rows.append((name, "anchor round trip", 1, None, statistics.median(anchor), pct(anchor, 0.99)))
    run = secrets.token_hex(4)
    # "one user": every reservation hits the same user and organisation counters (the
    # worst case: one hot row); "many users": 32 users share only the organisation's.
    for tasks, users in ((1, 1), (32, 1), (32, 32)):
        charges = [
            (
                QuotaCharge.for_subject(QuotaSubject.USER, f"u{n}", USER, NOW, organization_id="o"),
                QuotaCharge.for_subject(
                    QuotaSubject.ORGANIZATION, "o", USER, NOW, organization_id="o"
                ),
            )
            for n in range(users)
        ]

        async def reserve_settle(i: int, tasks: int = tasks, charges: list = charges) -> None:
            reservation = Reservation(
                id=f"{run}-{tasks}-{len(charges)}-{i}",
                charges=charges[i % len(charges)],
                bytes=1000,
                downloads=1,
                expires_at=NOW + timedelta(hours=1),
            )
            assert (await store.reserve(reservation)).ok
            await store.settle(reservation.id, 600)

        rate, lat = await timed(ops, reserve_settle, tasks)
        label = f"reserve+settle, {'one user' if users == 1 else f'{users} users'}"
        rows.append((name, label, tasks, rate, statistics.median(lat), pct(lat, 0.99)))
    return rows


async def seed_history(db: Any, rows: int, datasets: int) -> None:
    """Insert ``rows`` download records spread over ``datasets`` datasets, server-side."""
    from sqlalchemy import text

    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO download_records
                  (id, dataset_id, organization_id, version, format, status, channel,
                   started_at, downloader, principal_id, bytes_sent, finished_at, logical)
                SELECT 'r' || g, 'd' || (g % :datasets), 'o', 1, 'original', 'completed', 'api',
                       timestamptz '2026-01-01' + (g || ' seconds')::interval,
                       'user:u' || (g % 5000), 'u' || (g % 5000), 1000,
                       timestamptz '2026-01-01' + (g || ' seconds')::interval, g % 3 = 0
                FROM generate_series(1, :rows) AS g
                """
            ),
            {"rows": rows, "datasets": datasets},
        )
        await conn.execute(text("ANALYZE download_records"))


async def bench_history(db: Any, audit: Any, rows: int, pages: int = 300) -> list[tuple]:
    from sqlalchemy import text

    datasets = 20
    began = time.perf_counter()
    await seed_history(db, rows, datasets)
    seeded = time.perf_counter() - began
    print(f"seeded {rows:,} audit rows in {seeded:.1f} s")
    _, anchor = await timed(200, lambda _i: db.ping(), 1)
    per_dataset = rows // datasets
    rng = secrets.SystemRandom()
    positions = []
    async with db.engine.connect() as conn:
        for _ in range(pages):
            g = rng.randrange(1, rows)
            start = await conn.scalar(
                text("SELECT started_at FROM download_records WHERE id = :id"), {"id": f"r{g}"}
            )
            positions.append((f"d{g % datasets}", (start, f"r{g}")))

    async def page(i: int) -> None:
        dataset_id, before = positions[i]
        found = await audit.history(HistoryQuery(dataset_id=dataset_id, limit=50, before=before))
        assert len(found) > 0

    async def first_page(i: int) -> None:
        found = await audit.history(HistoryQuery(dataset_id=f"d{i % datasets}", limit=50))
        assert len(found) == 50

    _, deep = await timed(pages, page, 1)
    _, first = await timed(pages, first_page, 1)
    label = f"history page ({per_dataset:,} rows/dataset, {rows:,} in all)"
    return [
        ("postgresql", "anchor SELECT 1", 1, None, statistics.median(anchor), pct(anchor, 0.99)),
        ("postgresql", label + ", first page", 1, None, statistics.median(first), pct(first, 0.99)),
        ("postgresql", label + ", random depth", 1, None, statistics.median(deep), pct(deep, 0.99)),
    ]


async def main(ops: int, history_rows: int) -> None:
    from datadl.adapters.sql import SqlAuditLog, SqlDatabase, SqlUsageStore

    table: list[tuple] = []
    memory = MemoryUsageStore()
    table += await bench_store("memory", memory, lambda: memory.usage([]), ops)

    with tempfile.TemporaryDirectory() as tmp:
        db = SqlDatabase.from_url(f"sqlite:///{Path(tmp) / 'bench.db'}")
        await db.upgrade()
        try:
            table += await bench_store("sqlite", SqlUsageStore(db), db.ping, ops)
        finally:
            await db.dispose()

    pg_url = os.environ.get("DATADL_TEST_POSTGRES_URL")
    if pg_url:
        schema = f"datadl_bench_{secrets.token_hex(4)}"
        db = SqlDatabase.from_url(pg_url, schema=schema, pool_size=32)
        await db.upgrade()
        try:
            table += await bench_store("postgresql", SqlUsageStore(db), db.ping, ops)
            if history_rows:
                table += await bench_history(db, SqlAuditLog(db), history_rows)
        finally:
            from sqlalchemy import text

            async with db.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await db.dispose()
    else:
        print("PostgreSQL skipped: set DATADL_TEST_POSTGRES_URL")

    redis_url = os.environ.get("DATADL_TEST_REDIS_URL")
    if redis_url:
        from datadl.adapters.redis import RedisUsageStore

        prefix = f"datadl-bench:{secrets.token_hex(4)}:"
        store = RedisUsageStore.from_url(redis_url, prefix=prefix)
        try:
            table += await bench_store("redis", store, store._client.ping, ops)
            await store.cleanup(NOW + timedelta(days=400))
        finally:
            await store.aclose()
    else:
        print("Redis skipped: set DATADL_TEST_REDIS_URL")

    print()
    print(
        f"{'backend':<11} {'operation':<62} {'tasks':>5} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for backend, op, tasks, rate, p50, p99 in table:
        shown = f"{rate:9.0f}" if rate is not None else f"{'':>9}"
        print(f"{backend:<11} {op:<62} {tasks:>5} {shown} {p50 * 1000:8.2f} {p99 * 1000:8.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.history_rows))
