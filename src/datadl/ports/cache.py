"""The Cache port: short-lived derived values keyed by strings."""

from __future__ import annotations

from typing import Protocol


class Cache(Protocol):
    """A byte-value cache; a miss is normal, so reads never raise for a missing key.

    Every method may raise ``Unavailable`` when the backend cannot be reached.
    """

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any, for ``ttl_seconds`` (None: no expiry)."""
        ...

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True if it was stored (a lock primitive)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...
