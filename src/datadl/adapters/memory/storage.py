"""An in-process BlobStore: file bytes in a dictionary."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime

import attrs

from datadl.domain.errors import FileMissing, PayloadTooLarge
from datadl.ports.storage import BlobStat, StoredBlob

DEFAULT_CHUNK_SIZE = 64 * 1024


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key, else raise ``ValueError``.

    Refused: the empty key, a leading ``/``, a ``..`` segment, backslashes, NUL and
    ``::`` (which some filesystem layers read as a protocol chain).
    """
    if not key:
        raise ValueError("a storage key must not be empty")
    if key.startswith("/"):
        raise ValueError(f"a storage key must be relative: {key!r}")
    if "\\" in key or "\x00" in key or "::" in key:
        raise ValueError(f"a storage key holds a forbidden character: {key!r}")
    if ".." in key.split("/"):
        raise ValueError(f"a storage key must not climb out of its root: {key!r}")
    return key


def _now_utc() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class _Blob:
    data: bytes
    sha256: str
    modified_at: datetime


class MemoryBlobStore:
    """The BlobStore port in one process's memory.

    A write is buffered and published under its key only once the stream ends; a failed
    write leaves any earlier object under the key as it was. ``clock`` stamps
    modification times (an aware UTC datetime); reads stream chunks of at most
    ``chunk_size`` bytes. There are no presigned URLs.
    """

    def __init__(
        self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, clock: Callable[[], datetime] = _now_utc
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._chunk_size = chunk_size
        self._clock = clock
        self._blobs: dict[str, _Blob] = {}

    async def write(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StoredBlob:
        check_key(key)
        digest = hashlib.sha256()
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise PayloadTooLarge(f"The upload exceeds {max_bytes} bytes.")
            digest.update(chunk)
            parts.append(bytes(chunk))
        blob = _Blob(data=b"".join(parts), sha256=digest.hexdigest(), modified_at=self._clock())
        self._blobs[key] = blob
        return StoredBlob(key=key, size=size, sha256=blob.sha256)

    def _get(self, key: str) -> _Blob:
        check_key(key)
        try:
            return self._blobs[key]
        except KeyError:
            raise FileMissing(f"No stored object {key!r}.") from None

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < 0):
            raise ValueError("a byte range must not be negative")
        data = self._get(key).data
        stop = len(data) if end is None else min(end, len(data))
        view = memoryview(data)
        for offset in range(start, stop, self._chunk_size):
            yield bytes(view[offset : min(offset + self._chunk_size, stop)])

    async def stat(self, key: str) -> BlobStat:
        blob = self._get(key)
        return BlobStat(size=len(blob.data), modified_at=blob.modified_at, etag=f'"{blob.sha256}"')

    async def exists(self, key: str) -> bool:
        return check_key(key) in self._blobs

    async def delete(self, key: str) -> None:
        self._blobs.pop(check_key(key), None)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for key in sorted(k for k in self._blobs if k.startswith(prefix)):
            yield key

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        check_key(key)
        return None

    async def purge_staged(self, older_than: datetime) -> int:
        # A write is buffered in the writing coroutine: nothing outlives a failed one.
        return 0
