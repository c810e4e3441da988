"""The UsageStore and Cache contracts, and agreement with memory, on a real Redis."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio
import redis.exceptions as rx
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from datadl.adapters.memory import MemoryUsageStore
from datadl.adapters.redis import RedisCache, RedisDataError, RedisUsageStore
from datadl.domain.errors import Unavailable
from datadl.domain.quotas import Usage
from datadl.ports import Cache, UsageStore
from datadl.ports.usage import CleanupCounts, TokenUse
from datadl.testing import CacheContract, UsageStoreContract, usage_store_agreement
from datadl.testing.builders import T0, at, charge, reservation

pytestmark = pytest.mark.redis

AGREEMENT = settings(max_examples=20, stateful_step_count=20, deadline=None)
HOW_TO_ENABLE = "set DATADL_TEST_REDIS_URL=redis://host:6379/0 to run the Redis contract tests"


def _new_prefix() -> str:
    return f"datadl-test:{secrets.token_hex(8)}:"


def _delete_prefixed(client: redis.Redis, prefix: str) -> None:
    # The prefix is hex and colons only, so it matches itself as a glob pattern.
    for batch in _batched(client.scan_iter(match=f"{prefix}*", count=500)):
        client.delete(*batch)


def _batched(keys: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == 500:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis's URL; skips (or fails, when services are required) without one."""
    url = os.environ.get("DATADL_TEST_REDIS_URL")
    required = os.environ.get("DATADL_REQUIRE_SERVICES") == "1"
    if not url:
        if required:
            pytest.fail(f"DATADL_REQUIRE_SERVICES=1 but no Redis URL: {HOW_TO_ENABLE}")
        pytest.skip(HOW_TO_ENABLE)
    # No retries: an unreachable server should be reported at once, not after backoff.
    with redis.Redis.from_url(url, socket_timeout=2, retry=None) as probe:
        try:
            probe.ping()
        except redis.RedisError as error:
            message = f"Redis at DATADL_TEST_REDIS_URL is unreachable: {error}"
            if required:
                pytest.fail(message)
            pytest.skip(message)
    return url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, whose keys are deleted when it ends."""
    prefix = _new_prefix()
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        _delete_prefixed(client, prefix)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client on this test's event loop, closed after it."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url, max_connections=32, timeout=5, socket_timeout=5
    )
    client = redis.asyncio.Redis.from_pool(pool)
    yield client
    await client.aclose()


def _closed_port() -> int:
    # A port the kernel just handed out and took back: nothing listens on it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestRedisUsageStore(UsageStoreContract):
    """RedisUsageStore keeps the UsageStore contract."""

    @pytest.fixture
    def usage_store(self, redis_client: redis.asyncio.Redis, prefix: str) -> UsageStore:
        return RedisUsageStore(redis_client, prefix=prefix)

    async def test_prefixes_keep_stores_apart(
        self, redis_client: redis.asyncio.Redis, prefix: str
    ) -> None:
        """Two stores on one Redis with different prefixes share nothing, every key prefixed."""
        first = RedisUsageStore(redis_client, prefix=f"{prefix}a:")
        second = RedisUsageStore(redis_client, prefix=f"{prefix}b:")
        await first.reserve(reservation("r1", charge("u"), bytes=10))
        await first.compare_and_set_tat("k", None, 1.0, expires_at=100.0)
        await first.revoke_token("t", expires_at=at(60))
        await first.use_token("t", "s", max_uses=1, now=T0, idle_seconds=60, expires_at=at(60))
        await first.touch_session("s", now=T0, idle_seconds=60)
        assert list(await second.usage(["u"])) == [Usage()]
        assert await second.get_tat("k") is None
        assert not await second.is_revoked("t")
        assert await second.use_token(
            "t", "s", max_uses=1, now=T0, idle_seconds=60, expires_at=at(60)
        ) == TokenUse(True, 1, True)
        assert not await second.settle("r1", 0)
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*")]
        assert keys
        assert all(key.decode().startswith((f"{prefix}a:", f"{prefix}b:")) for key in keys)

    async def test_no_key_gets_a_redis_ttl(
        self, redis_client: redis.asyncio.Redis, prefix: str
    ) -> None:
        """Expiry is cleanup's, judged on the caller's clock: Redis never drops a key itself."""
        store = RedisUsageStore(redis_client, prefix=prefix)
        long_ago = datetime(1990, 1, 1, tzinfo=UTC)
        await store.reserve(
            reservation("r1", charge("u", window_end=long_ago), bytes=1, expires_at=long_ago)
        )
        await store.use_token(
            "t", "s", max_uses=None, now=long_ago, idle_seconds=0, expires_at=long_ago
        )
        await store.touch_session("s", now=long_ago, idle_seconds=0)
        await store.revoke_token("t", expires_at=long_ago)
        await store.compare_and_set_tat("k", None, 1.0, expires_at=0.0)
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*")]
        assert len(keys) == 13
        assert {await redis_client.ttl(key) for key in keys} == {-1}

    async def test_cleanup_leaves_no_key_behind(
        self, redis_client: redis.asyncio.Redis, prefix: str
    ) -> None:
        """Once everything expired, cleanup removes every key and index, in small batches."""
        store = RedisUsageStore(redis_client, prefix=prefix, cleanup_batch=3)
        # Names with colons and non-ASCII letters, which the session index must split back.
        for i in range(7):
            await store.reserve(reservation(f"r:{i}", charge(f"c:{i}"), charge("shared")))
            for session_key in ("a:1", "ü"):
                await store.use_token(
                    f"t:{i}:é",
                    session_key,
                    max_uses=None,
                    now=T0,
                    idle_seconds=60 * i,
                    expires_at=at(600 * i),
                )
            await store.touch_session(f"s:{i}", now=T0, idle_seconds=60)
            await store.revoke_token(f"t:{i}:é", expires_at=at(600))
            await store.compare_and_set_tat(f"k:{i}", None, 1.0, expires_at=at(600).timestamp())
        # t:0:é has expired with both its sessions; t:1:é to t:3:é keep only their tokens.
        assert await store.cleanup(at(200)) == CleanupCounts(token_uses=1, sessions=2 + 6 + 7)
        counts = await store.cleanup(at(7 * 86_400))
        assert counts == CleanupCounts(
            reservations=7, counters=8, token_uses=6, revocations=7, sessions=6, rate_states=7
        )
        assert [key async for key in redis_client.scan_iter(match=f"{prefix}*")] == []

    async def test_expiries_move_as_in_memory(self, usage_store: UsageStore) -> None:
        """Token, revocation and window ends only grow, a TAT's expiry is replaced, as in memory."""
        memory = MemoryUsageStore()
        # The agreement machine gives each token and counter one fixed expiry, so it never
        # sees an expiry change; these steps do, on both stores.
        for store in (memory, usage_store):
            await store.reserve(reservation("r1", charge("c", window_end=at(600))))
            await store.reserve(
                reservation("r2", charge("c", window_end=at(60)), expires_at=at(60))
            )
            for token_id, session_key, expires in (
                ("t", "a", 600),
                ("t", "b", 60),
                ("t", "a", 30),
                ("u", "a", 60),
                ("u", "a", 600),
                ("v", "a", 60),
                ("v", "b", 600),
            ):
                await store.use_token(
                    token_id,
                    session_key,
                    max_uses=None,
                    now=T0,
                    idle_seconds=3600,
                    expires_at=at(expires),
                )
            await store.revoke_token("t", expires_at=at(600))
            await store.revoke_token("t", expires_at=at(60))
            await store.compare_and_set_tat("k", None, 1.0, expires_at=at(600).timestamp())
            await store.compare_and_set_tat("k", 1.0, 2.0, expires_at=at(60).timestamp())
        expected = await memory.cleanup(at(100))
        assert expected == CleanupCounts(reservations=1, rate_states=1)
        assert await usage_store.cleanup(at(100)) == expected
        expected = await memory.cleanup(at(600))
        assert await usage_store.cleanup(at(600)) == expected
        assert expected.token_uses == 3

    async def test_tat_keeps_every_float_exactly(self, usage_store: UsageStore) -> None:
        """A TAT reads back bit for bit and compares exactly, however many digits it has."""
        values = [0.1 + 0.2, 5e-324, 1e300, 1_709_294_400.123456789, -0.0, float("inf")]
        previous: float | None = None
        for value in values:
            assert await usage_store.compare_and_set_tat("k", previous, value, expires_at=1e12)
            assert await usage_store.get_tat("k") == value
            if math.isfinite(value):
                assert not await usage_store.compare_and_set_tat(
                    "k", math.nextafter(value, math.inf), 1.0, expires_at=1e12
                )
            previous = value
        assert not await usage_store.compare_and_set_tat("k", float("nan"), 1.0, expires_at=1e12)

    async def test_microsecond_boundaries_are_exact(self, usage_store: UsageStore) -> None:
        """Idle times and expiries compare to the microsecond, far from today's clock."""
        far = datetime(2199, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)
        assert await usage_store.touch_session("s", now=far, idle_seconds=0.000_001)
        step = timedelta(microseconds=1)
        assert not await usage_store.touch_session("s", now=far + step, idle_seconds=0.000_001)
        assert await usage_store.touch_session("s", now=far + 3 * step, idle_seconds=0.000_001)
        await usage_store.reserve(reservation("r", charge("c", window_end=far), expires_at=far))
        assert await usage_store.cleanup(far - step) == CleanupCounts()
        assert await usage_store.cleanup(far) == CleanupCounts(reservations=1, counters=1)

    async def test_foreign_data_under_the_prefix_is_a_clear_error(
        self, redis_client: redis.asyncio.Redis, prefix: str
    ) -> None:
        """A key of the wrong type where a counter belongs raises RedisDataError, not redis-py's."""
        store = RedisUsageStore(redis_client, prefix=prefix)
        await redis_client.set(f"{prefix}counter:c", b"not a hash")
        with pytest.raises(RedisDataError, match="reserve"):
            await store.reserve(reservation("r", charge("c")))
        with pytest.raises(RedisDataError, match="usage"):
            await store.usage(["c"])

    async def test_scripts_survive_a_script_flush(
        self, redis_client: redis.asyncio.Redis, prefix: str
    ) -> None:
        """After Redis forgets its scripts (a restart, a failover) they are loaded again."""
        store = RedisUsageStore(redis_client, prefix=prefix)
        assert (await store.reserve(reservation("r1", charge("c")))).ok
        await redis_client.script_flush()
        assert await store.settle("r1", 5)

    async def test_a_decoding_client_is_refused(self, redis_url: str) -> None:
        """A client that decodes replies to str would corrupt byte values, so it is refused."""
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            with pytest.raises(ValueError, match="decode_responses"):
                RedisUsageStore(client)
            with pytest.raises(ValueError, match="decode_responses"):
                RedisCache(client)
        finally:
            await client.aclose()

    async def test_aclose_closes_only_its_own_client(
        self, redis_client: redis.asyncio.Redis, redis_url: str, prefix: str
    ) -> None:
        """A store made by from_url closes its client; one given a client leaves it open."""
        owned = RedisUsageStore.from_url(redis_url, prefix=prefix)
        assert await owned.get_tat("k") is None
        await owned.aclose()
        lent = RedisUsageStore(redis_client, prefix=prefix)
        await lent.aclose()
        assert await redis_client.ping()

    def test_bad_arguments_are_refused(self, redis_client: redis.asyncio.Redis) -> None:
        """A cleanup batch smaller than one is a programming error."""
        with pytest.raises(ValueError, match="cleanup_batch"):
            RedisUsageStore(redis_client, cleanup_batch=0)


class TestRedisCache(CacheContract):
    """RedisCache keeps the Cache contract, expiring entries in real time."""

    @pytest.fixture
    def cache(self, redis_client: redis.asyncio.Redis, prefix: str) -> Cache:
        return RedisCache(redis_client, prefix=prefix)

    async def test_zero_and_odd_ttls(self, cache: Cache) -> None:
        """A TTL of zero or less stores nothing lasting; NaN and infinity never expire."""
        await cache.set("k", b"v")
        await cache.set("k", b"w", ttl_seconds=0)
        assert await cache.get("k") is None
        assert await cache.add("k", b"x", ttl_seconds=-1)
        assert await cache.get("k") is None
        await cache.set("k", b"y")
        assert not await cache.add("k", b"z", ttl_seconds=0)
        assert await cache.get("k") == b"y"
        await cache.set("inf", b"i", ttl_seconds=float("inf"))
        await cache.set("nan", b"n", ttl_seconds=float("nan"))
        await cache.set("tiny", b"t", ttl_seconds=1e-9)
        await asyncio.sleep(0.05)
        assert [await cache.get(k) for k in ("inf", "nan", "tiny")] == [b"i", b"n", None]

    async def test_keys_are_prefixed(
        self, redis_client: redis.asyncio.Redis, prefix: str, cache: Cache
    ) -> None:
        """An entry lives under the prefix, with a millisecond TTL when it has one."""
        await cache.set("k", b"v", ttl_seconds=30.5)
        assert await redis_client.get(f"{prefix}cache:k") == b"v"
        assert 30_000 < await redis_client.pttl(f"{prefix}cache:k") <= 30_500


def test_redis_usage_store_agrees_with_memory(redis_url: str) -> None:
    """A Redis usage store answers random operations exactly as the memory store does."""
    prefix = _new_prefix()
    runs = iter(range(10**9))

    def make_candidate() -> RedisUsageStore:
        # Each run starts on an empty store: a fresh prefix under this test's own.
        return RedisUsageStore.from_url(redis_url, prefix=f"{prefix}{next(runs)}:")

    try:
        machine = usage_store_agreement(MemoryUsageStore, make_candidate)
        run_state_machine_as_test(machine, settings=AGREEMENT)
    finally:
        with redis.Redis.from_url(redis_url) as client:
            _delete_prefixed(client, prefix)


async def test_a_redis_that_is_down_is_unavailable_at_once() -> None:
    """With nothing listening, every operation raises Unavailable with a hint, quickly."""
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    store = RedisUsageStore.from_url(url, socket_timeout=1.0)
    cache = RedisCache.from_url(url, socket_timeout=1.0)
    started = time.monotonic()
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get_tat("k"),
            lambda: store.compare_and_set_tat("k", None, 1.0, expires_at=1.0),
            lambda: store.reserve(reservation("r", charge("c"))),
            lambda: store.settle("r", 0),
            lambda: store.usage(["c"]),
            lambda: store.use_token("t", "s", max_uses=1, now=T0, idle_seconds=1, expires_at=T0),
            lambda: store.touch_session("s", now=T0, idle_seconds=1),
            lambda: store.revoke_token("t", expires_at=T0),
            lambda: store.is_revoked("t"),
            lambda: store.cleanup(T0),
            lambda: cache.get("k"),
            lambda: cache.set("k", b"v"),
            lambda: cache.add("k", b"v"),
            lambda: cache.delete("k"),
        ]
        for call in calls:
            with pytest.raises(Unavailable, match="could not be reached") as caught:
                await call()
            assert "running" in caught.value.hint
            assert caught.value.code == "unavailable"
    finally:
        await store.aclose()
        await cache.aclose()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (rx.ConnectionError("refused"), Unavailable, "could not be reached"),
        (rx.TimeoutError("timed out"), Unavailable, "could not be reached"),
        (ConnectionResetError("reset"), Unavailable, "could not be reached"),
        (rx.BusyLoadingError("loading"), Unavailable, "cannot serve"),
        (rx.ReadOnlyError("replica"), Unavailable, "cannot serve"),
        (rx.ResponseError("BUSY Redis is busy running a script"), Unavailable, "cannot serve"),
        (rx.OutOfMemoryError("maxmemory"), Unavailable, "out of memory"),
        (rx.AuthenticationError("invalid password"), Unavailable, "refused"),
        (rx.ResponseError("WRONGTYPE Operation"), RedisDataError, "refused"),
        (rx.DataError("bad argument"), RedisDataError, "failed"),
    ],
)
async def test_redis_errors_become_port_errors(
    error: Exception, expected: type[Exception], words: str
) -> None:
    """Outages and busy servers become Unavailable, anything else RedisDataError."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=_closed_port())
    store = RedisUsageStore(client)
    try:
        with pytest.raises(expected, match=words) as caught, store._translated("reserve"):
            raise error
        assert type(caught.value) is expected
        assert caught.value.__cause__ is error
    finally:
        await client.aclose()


async def test_a_redis_that_never_answers_times_out() -> None:
    """A server that accepts connections but stays silent gives Unavailable after the timeout."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisUsageStore.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="reserve"):
            await store.reserve(reservation("r", charge("c")))
        with pytest.raises(Unavailable):
            await store.get_tat("k")
    finally:
        await store.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    assert time.monotonic() - started < 3
