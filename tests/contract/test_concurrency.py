"""Across two OS processes sharing one store, atomic limits admit exactly what fits."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.concurrency_worker import AMOUNT, CAPACITY, NOW, open_store

ROOT = Path(__file__).resolve().parents[2]
PER_PROCESS = 100  # 200 attempts in all, against room for CAPACITY


def _required() -> bool:
    return os.environ.get("DATADL_REQUIRE_SERVICES") == "1"


def _service_url(name: str, example: str) -> str:
    url = os.environ.get(name)
    if not url:
        message = f"set {name}={example} to run the cross-process tests on this backend"
        if _required():
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str, str]]:
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        namespace = ""
    elif kind == "postgresql":
        url = _service_url("DATADL_TEST_POSTGRES_URL", "postgresql://user@127.0.0.1:5432/db")
        namespace = f"datadl_conc_{secrets.token_hex(6)}"
    else:
        url = _service_url("DATADL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        namespace = f"datadl-test:{secrets.token_hex(6)}:"
    if kind != "redis":
        from datadl.adapters.sql import SqlDatabase

        db = SqlDatabase.from_url(url, schema=namespace or None)
        try:
            await db.upgrade()
        finally:
            await db.dispose()
    yield kind, url, namespace
    if kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        finally:
            await conn.close()
    elif kind == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{namespace}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


def _run_two(kind: str, url: str, namespace: str, what: str) -> int:
    start = time.time() + 1.5
    args = [kind, url, namespace, what, str(PER_PROCESS), repr(start)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.contract.concurrency_worker", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    admitted = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        admitted += json.loads(out.strip().splitlines()[-1])["admitted"]
    return admitted


@pytest.mark.parametrize("what", ["quota", "rate", "token"])
async def test_two_processes_never_overrun_a_shared_limit(
    backend: tuple[str, str, str], what: str
) -> None:
    """200 attempts from two processes admit exactly the capacity, never one more."""
    kind, url, namespace = backend
    admitted = await asyncio.to_thread(_run_two, kind, url, namespace, what)
    assert admitted == CAPACITY
    if what == "quota":
        store, closer = await open_store(kind, url, namespace)
        try:
            from datadl.domain.policy import QuotaLimit
            from datadl.domain.quotas import QuotaCharge, QuotaSubject

            key = QuotaCharge.for_subject(
                QuotaSubject.USER,
                "shared-user",
                QuotaLimit(bytes=CAPACITY * AMOUNT),
                NOW,
                organization_id="org",
            ).key
            (usage,) = await store.usage([key])
        finally:
            await (closer.aclose() if hasattr(closer, "aclose") else closer.dispose())
        # Refused reservations left no trace: the counter holds exactly what was admitted.
        assert usage.bytes == CAPACITY * AMOUNT
