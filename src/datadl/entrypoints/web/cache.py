"""Short-lived in-process caches of the hot read path: verified API keys and dataset JSON."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from datadl.domain.access import Principal

#: How long a verified key or a rendered dataset is reused without asking the catalogue.
TTL_SECONDS = 5.0
_MAX_ENTRIES = 10_000
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadCache:
    """Verified API keys and rendered datasets, each reused for at most ``ttl`` seconds.

    Verifying a key and rendering a dataset cost several catalogue queries per request;
    a client polling metadata repeats the same ones. Entries live ``ttl`` seconds at most
    and go sooner when this process sees a change: any state-changing request clears
    everything, revoking a key forgets it, a download forgets its dataset (it changes
    ``download_count``). Other processes (workers, the CLI) are seen within ``ttl``.
    Keys are kept by the SHA-256 of the presented key, never the key itself.
    """

    def __init__(
        self,
        ttl: float = TTL_SECONDS,
        *,
        max_entries: int = _MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._keys: dict[bytes, tuple[float, Principal]] = {}
        self._datasets: dict[str, dict[Principal, tuple[float, bytes]]] = {}
        self._dataset_entries = 0

    def principal(self, presented_key: str) -> Principal | None:
        """The principal a key was verified as within the TTL, or None."""
        found = self._keys.get(hashlib.sha256(presented_key.encode()).digest())
        if found is None or found[0] < self._clock():
            return None
        return found[1]

    def remember_principal(self, presented_key: str, principal: Principal) -> None:
        if len(self._keys) >= self._max:
            self._keys.clear()
        digest = hashlib.sha256(presented_key.encode()).digest()
        self._keys[digest] = (self._clock() + self._ttl, principal)

    def forget_key(self, key_id: str) -> None:
        """Forget every verification of the key ``key_id`` (it was revoked)."""
        for digest, (_, principal) in list(self._keys.items()):
            if principal.api_key_id == key_id:
                del self._keys[digest]

    def dataset(self, dataset_id: str, principal: Principal) -> bytes | None:
        """The Dataset JSON (encoded) rendered for this principal within the TTL, or None."""
        found = self._datasets.get(dataset_id, {}).get(principal)
        if found is None or found[0] < self._clock():
            return None
        return found[1]

    def remember_dataset(self, dataset_id: str, principal: Principal, body: bytes) -> None:
        if self._dataset_entries >= self._max:
            self._datasets.clear()
            self._dataset_entries = 0
        entries = self._datasets.setdefault(dataset_id, {})
        if principal not in entries:
            self._dataset_entries += 1
        entries[principal] = (self._clock() + self._ttl, body)

    def forget_dataset(self, dataset_id: str) -> None:
        self._dataset_entries -= len(self._datasets.pop(dataset_id, {}))

    def clear(self) -> None:
        self._keys.clear()
        self._datasets.clear()
        self._dataset_entries = 0


READ_CACHE: web.AppKey[ReadCache] = web.AppKey("read_cache", ReadCache)


@web.middleware
async def invalidate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Clear the read cache after every state-changing request, whatever its outcome."""
    if request.method in _SAFE_METHODS:
        return await handler(request)
    try:
        return await handler(request)
    finally:
        request.app[READ_CACHE].clear()
