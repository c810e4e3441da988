"""The Cache contract suite: subclass ``CacheContract`` and provide a ``cache`` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from datadl.ports.cache import Cache

#: Moves the cache's notion of time forward by some seconds.
Advance = Callable[[float], Awaitable[None]]


class CacheContract:
    """Every promise of the Cache port, for any adapter.

    Subclass it as ``TestMyCache(CacheContract)`` and provide a ``cache`` fixture that
    yields an empty cache. Expiry tests wait with ``asyncio.sleep`` through the
    ``advance`` fixture; override it to move a fake clock instead.
    """

    @pytest.fixture
    def advance(self) -> Advance:
        """Let real time pass."""
        return asyncio.sleep

    async def test_missing_key_reads_none(self, cache: Cache) -> None:
        """A key never set reads as None, without raising."""
        assert await cache.get("missing") is None

    async def test_value_round_trips(self, cache: Cache) -> None:
        """Any bytes, empty and binary included, come back equal."""
        values = {"empty": b"", "binary": bytes(range(256)) * 4, "text": "é".encode()}
        for key, value in values.items():
            await cache.set(key, value)
        for key, value in values.items():
            assert await cache.get(key) == value

    async def test_set_replaces(self, cache: Cache) -> None:
        """Setting a key again replaces its value, and leaves other keys alone."""
        await cache.set("k", b"one")
        await cache.set("j", b"other")
        await cache.set("k", b"two")
        assert await cache.get("k") == b"two"
        assert await cache.get("j") == b"other"

    async def test_add_stores_only_when_absent(self, cache: Cache) -> None:
        """Add stores into an absent key and refuses, unchanged, a present one."""
        assert await cache.add("lock", b"me")
        assert not await cache.add("lock", b"you")
        assert await cache.get("lock") == b"me"
        await cache.delete("lock")
        assert await cache.add("lock", b"you")
        assert await cache.get("lock") == b"you"

    async def test_concurrent_adds_have_one_winner(self, cache: Cache) -> None:
        """Of many concurrent adds of one key, exactly one stores its value."""
        results = await asyncio.gather(*(cache.add("lock", str(i).encode()) for i in range(30)))
        assert results.count(True) == 1
        assert await cache.get("lock") == str(results.index(True)).encode()

    async def test_delete_is_idempotent(self, cache: Cache) -> None:
        """Deleting removes the key; deleting a missing key is not an error."""
        await cache.set("k", b"v")
        await cache.delete("k")
        await cache.delete("k")
        await cache.delete("never")
        assert await cache.get("k") is None

    async def test_entries_expire(self, cache: Cache, advance: Advance) -> None:
        """An entry with a TTL reads until it expires and as None afterwards."""
        await cache.set("short", b"v", ttl_seconds=0.3)
        await cache.set("forever", b"w")
        await cache.set("long", b"x", ttl_seconds=60)
        assert await cache.get("short") == b"v"
        await advance(0.6)
        assert await cache.get("short") is None
        assert await cache.get("forever") == b"w"
        assert await cache.get("long") == b"x"

    async def test_add_over_an_expired_entry(self, cache: Cache, advance: Advance) -> None:
        """An expired entry no longer blocks add, which then stores the new value."""
        assert await cache.add("lock", b"a", ttl_seconds=0.3)
        assert not await cache.add("lock", b"b", ttl_seconds=0.3)
        await advance(0.6)
        assert await cache.add("lock", b"c")
        assert await cache.get("lock") == b"c"

    async def test_set_without_ttl_clears_the_old_ttl(self, cache: Cache, advance: Advance) -> None:
        """Replacing an expiring entry by one without TTL makes it last."""
        await cache.set("k", b"old", ttl_seconds=0.3)
        await cache.set("k", b"new")
        await advance(0.6)
        assert await cache.get("k") == b"new"
