"""An in-process Cache with expiry and least-recently-used eviction."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryCache:
    """The Cache port in one process's memory.

    ``clock`` gives monotonic seconds (``time.monotonic`` by default); an entry expires
    once the clock reaches its deadline. Past ``max_entries`` the least recently read or
    written entry is evicted.
    """

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline is not None and self._clock() >= deadline:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    def _store(self, key: str, value: bytes, ttl_seconds: float | None) -> None:
        deadline = None if ttl_seconds is None else self._clock() + ttl_seconds
        self._entries[key] = (bytes(value), deadline)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        self._store(key, value, ttl_seconds)

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        # No await between the check and the write: ``add`` is a lock primitive.
        self._store(key, value, ttl_seconds)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
