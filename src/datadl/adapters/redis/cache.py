"""A Cache on Redis: plain string keys under a prefix, expired by Redis itself."""

from __future__ import annotations

import math
from typing import cast

from datadl.adapters.redis._client import RedisAdapter

# Past about 30,000 years an expiry is never reached; Redis refuses such large PX values.
_NEVER_MS = 10**15


def _ttl_ms(ttl_seconds: float | None) -> int | None:
    # Milliseconds to live: None for no expiry, 0 for an entry expired on arrival.
    if ttl_seconds is None or math.isnan(ttl_seconds):
        # The memory cache never reaches a NaN deadline either.
        return None
    if ttl_seconds <= 0:
        return 0
    ms = ttl_seconds * 1000
    if ms >= _NEVER_MS:
        return None
    # PX counts whole milliseconds; a positive TTL lives at least one.
    return max(1, round(ms))


class RedisCache(RedisAdapter):
    """The Cache port on Redis: each entry is the string ``<prefix>cache:<key>``.

    Here the TTL is real time, as the port means it, so Redis's own expiry (``PX``, to
    the millisecond) removes entries. Eviction beyond memory follows the server's
    ``maxmemory-policy``; ``allkeys-lru`` matches the memory cache best, but it also
    applies to a usage store on the same server, which must not lose keys: give the
    cache a Redis of its own if it is bounded.
    """

    def _key(self, key: str) -> str:
        return f"{self._prefix}cache:{key}"

    async def get(self, key: str) -> bytes | None:
        with self._translated("cache get"):
            value = await self._client.get(self._key(key))
        # The constructor refused clients that decode, so a value is always bytes.
        return cast(bytes | None, value)

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        ttl = _ttl_ms(ttl_seconds)
        with self._translated("cache set"):
            if ttl == 0:
                # Stored and expired at once: what stays is no entry at all.
                await self._client.delete(self._key(key))
            else:
                await self._client.set(self._key(key), bytes(value), px=ttl)

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        ttl = _ttl_ms(ttl_seconds)
        with self._translated("cache add"):
            if ttl == 0:
                # An entry expired on arrival is stored only in that nothing blocked it.
                return not await self._client.exists(self._key(key))
            stored = await self._client.set(self._key(key), bytes(value), px=ttl, nx=True)
        return bool(stored)

    async def delete(self, key: str) -> None:
        with self._translated("cache delete"):
            await self._client.delete(self._key(key))
