"""The BlobStore port: where file bytes live."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

import attrs


@attrs.frozen
class StoredBlob:
    """What a completed write stored: its key, size and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


@attrs.frozen
class BlobStat:
    """Facts a backend reports about a stored object."""

    size: int
    modified_at: datetime | None
    etag: str | None = None


class BlobStore(Protocol):
    """Stores and streams file bytes under keys that datadl chooses, never a user.

    Every method may raise ``StorageUnavailable`` when the backend cannot be reached.
    """

    async def write(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StoredBlob:
        """Store the stream under ``key``, hashing it on the way; visible only once complete.

        Raises ``PayloadTooLarge`` past ``max_bytes`` and leaves nothing under ``key``;
        any other failure of the stream (an exception from ``chunks``) also leaves nothing.
        """
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of ``key`` (``end`` None: to the end) in bounded chunks.

        Raises ``FileMissing`` when the key does not exist.
        """
        ...

    async def stat(self, key: str) -> BlobStat:
        """Size, modification time and backend ETag of ``key``; ``FileMissing`` if absent."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a complete object."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """The keys that start with ``prefix``, complete objects only, in key order."""
        ...

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        """A time-limited URL that serves ``key`` directly, or None if the backend has none."""
        ...

    async def purge_staged(self, older_than: datetime) -> int:
        """Remove the leftovers of writes that never finished and began before ``older_than``.

        A process that dies mid-write leaves staged bytes (a temporary file, an incomplete
        multipart upload) that no key names; this removes them and returns how many.
        Complete objects are never touched.
        """
        ...


@runtime_checkable
class LocalFiles(Protocol):
    """An optional capability of a BlobStore whose objects may be files on this machine.

    A server uses it to hand file bytes to the kernel (``sendfile``) instead of copying
    them through the process. Check for it with ``isinstance(store, LocalFiles)``.
    """

    async def open_local(self, key: str) -> BinaryIO | None:
        """``key`` opened for binary reading, or None when it is not a local file.

        The caller closes the file. Raises ``FileMissing`` when the key does not exist.
        """
        ...
