"""The BlobStore contract suite: subclass ``BlobStoreContract`` and provide ``blob_store``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from datadl.domain.errors import FileMissing, PayloadTooLarge
from datadl.ports.storage import BlobStore, StoredBlob
from datadl.testing.builders import collect, failing_stream, stream

_INVALID_KEYS = ("", "/abs/key", "a/../b", "..", "a/..", "a\\b", "a\x00b", "s3::bucket/key")


async def _keys(listing: AsyncIterator[str]) -> list[str]:
    return [key async for key in listing]


class BlobStoreContract:
    """Every promise of the BlobStore port, for any adapter.

    Subclass it as ``TestMyBlobStore(BlobStoreContract)`` and provide a ``blob_store``
    fixture that yields an empty store. Set ``read_chunk_limit`` to the largest chunk
    the adapter may yield to check that reads are bounded.
    """

    read_chunk_limit: ClassVar[int | None] = None

    async def test_write_then_read_round_trips(self, blob_store: BlobStore) -> None:
        """A written stream reads back whole, with its size and SHA-256 reported."""
        parts = (b"id,name\n", b"", b"1,a\n" * 1000, b"2,b\n")
        data = b"".join(parts)
        stored = await blob_store.write("ds/1/data.csv", stream(*parts))
        assert stored == StoredBlob("ds/1/data.csv", len(data), hashlib.sha256(data).hexdigest())
        assert await collect(blob_store.read("ds/1/data.csv")) == data
        assert await blob_store.exists("ds/1/data.csv")
        assert (await blob_store.stat("ds/1/data.csv")).size == len(data)

    async def test_empty_and_one_byte_blobs(self, blob_store: BlobStore) -> None:
        """An empty blob reads as no bytes at all; a one-byte blob's ranges are exact."""
        empty = await blob_store.write("empty", stream())
        assert empty == StoredBlob("empty", 0, hashlib.sha256(b"").hexdigest())
        assert await collect(blob_store.read("empty")) == b""
        assert await collect(blob_store.read("empty", 0, 10)) == b""
        assert (await blob_store.stat("empty")).size == 0
        await blob_store.write("one", stream(b"x"))
        assert await collect(blob_store.read("one")) == b"x"
        assert await collect(blob_store.read("one", 0, 1)) == b"x"
        assert await collect(blob_store.read("one", 1)) == b""
        assert await collect(blob_store.read("one", 0, 0)) == b""

    async def test_ranges_at_the_boundaries(self, blob_store: BlobStore) -> None:
        """Ranges [start, end) read the exact bytes, clamped to the end of the blob."""
        data = bytes(range(256)) * 1031
        size = len(data)
        await blob_store.write("b", stream(data[:1000], data[1000:]))
        cases = [
            (0, 1),
            (0, None),
            (size - 1, None),
            (size - 1, size),
            (size, None),
            (size + 10, None),
            (5, size + 100),
            (1000, 70_000),
            (123, 124),
            (17, 17),
            (size // 2, size),
        ]
        for start, end in cases:
            got = await collect(blob_store.read("b", start, end))
            assert got == data[start:end], (start, end)

    async def test_reads_are_chunked(self, blob_store: BlobStore) -> None:
        """A large read arrives in chunks no larger than the adapter's declared bound."""
        data = b"z" * (3 * 1024 * 1024 + 5)
        await blob_store.write("big", stream(data))
        sizes = [len(chunk) async for chunk in blob_store.read("big", 1)]
        assert sum(sizes) == len(data) - 1
        assert all(sizes)
        if self.read_chunk_limit is not None:
            assert max(sizes) <= self.read_chunk_limit

    async def test_failing_stream_leaves_nothing(self, blob_store: BlobStore) -> None:
        """A stream that raises midway stores nothing under its key."""
        with pytest.raises(OSError, match="went away"):
            await blob_store.write("k", failing_stream(b"a" * 100, b"b" * 100))
        assert not await blob_store.exists("k")
        assert await _keys(blob_store.list()) == []
        with pytest.raises(FileMissing):
            await blob_store.stat("k")
        with pytest.raises(FileMissing):
            await collect(blob_store.read("k"))

    async def test_failed_overwrite_keeps_the_old_object(self, blob_store: BlobStore) -> None:
        """A failed write over an existing key leaves the earlier object readable."""
        await blob_store.write("k", stream(b"old"))
        with pytest.raises(ValueError, match="bad chunk"):
            await blob_store.write("k", failing_stream(b"new", error=ValueError("bad chunk")))
        with pytest.raises(PayloadTooLarge):
            await blob_store.write("k", stream(b"newer" * 10), max_bytes=10)
        assert await collect(blob_store.read("k")) == b"old"

    async def test_size_limit(self, blob_store: BlobStore) -> None:
        """A stream past max_bytes is refused and leaves nothing; exactly max_bytes is fine."""
        with pytest.raises(PayloadTooLarge):
            await blob_store.write("big", stream(b"12345", b"678"), max_bytes=7)
        assert not await blob_store.exists("big")
        assert await _keys(blob_store.list()) == []
        stored = await blob_store.write("fits", stream(b"12345", b"67"), max_bytes=7)
        assert stored.size == 7
        assert await collect(blob_store.read("fits")) == b"1234567"

    async def test_overwrite_replaces(self, blob_store: BlobStore) -> None:
        """Writing an existing key replaces its bytes and facts."""
        await blob_store.write("k", stream(b"first version"))
        stored = await blob_store.write("k", stream(b"2nd"))
        assert stored == StoredBlob("k", 3, hashlib.sha256(b"2nd").hexdigest())
        assert await collect(blob_store.read("k")) == b"2nd"
        assert (await blob_store.stat("k")).size == 3

    async def test_missing_key(self, blob_store: BlobStore) -> None:
        """A missing key is FileMissing on read and stat, absent for exists, fine to delete."""
        with pytest.raises(FileMissing):
            await collect(blob_store.read("nope"))
        with pytest.raises(FileMissing):
            await collect(blob_store.read("nope", 5, 10))
        with pytest.raises(FileMissing):
            await blob_store.stat("nope")
        assert not await blob_store.exists("nope")
        await blob_store.delete("nope")

    async def test_delete_removes(self, blob_store: BlobStore) -> None:
        """A deleted key is gone from exists, list, stat and read; its neighbours stay."""
        await blob_store.write("a/1", stream(b"1"))
        await blob_store.write("a/2", stream(b"2"))
        await blob_store.delete("a/1")
        assert not await blob_store.exists("a/1")
        assert await _keys(blob_store.list("a/")) == ["a/2"]
        with pytest.raises(FileMissing):
            await blob_store.stat("a/1")
        assert await collect(blob_store.read("a/2")) == b"2"

    async def test_stat_reports_facts(self, blob_store: BlobStore) -> None:
        """Stat gives the size, an aware modification time or None, and an ETag or None."""
        await blob_store.write("k", stream(b"hello"))
        stat = await blob_store.stat("k")
        assert stat.size == 5
        assert stat.modified_at is None or stat.modified_at.utcoffset() is not None
        assert stat.etag is None or (isinstance(stat.etag, str) and stat.etag)

    async def test_etag_changes_with_content(self, blob_store: BlobStore) -> None:
        """Different content gives a different ETag; the same object keeps its ETag."""
        await blob_store.write("k", stream(b"one"))
        first = (await blob_store.stat("k")).etag
        assert (await blob_store.stat("k")).etag == first
        await blob_store.write("k", stream(b"two"))
        second = (await blob_store.stat("k")).etag
        if first is not None:
            assert second != first

    async def test_list_by_prefix_in_key_order(self, blob_store: BlobStore) -> None:
        """Listing yields the keys that start with the prefix, sorted."""
        for key in ("b/2", "a/1", "b/10", "ab/x", "b/1/deep", "c"):
            await blob_store.write(key, stream(key.encode()))
        assert await _keys(blob_store.list()) == ["a/1", "ab/x", "b/1/deep", "b/10", "b/2", "c"]
        assert await _keys(blob_store.list("b/")) == ["b/1/deep", "b/10", "b/2"]
        assert await _keys(blob_store.list("a")) == ["a/1", "ab/x"]
        assert await _keys(blob_store.list("a/")) == ["a/1"]
        assert await _keys(blob_store.list("zzz")) == []

    @pytest.mark.parametrize("key", _INVALID_KEYS)
    async def test_unsafe_keys_are_refused(self, blob_store: BlobStore, key: str) -> None:
        """Empty, absolute, climbing, backslashed, NUL and chained keys raise ValueError."""
        with pytest.raises(ValueError, match=r"."):
            await blob_store.write(key, stream(b"x"))
        assert await _keys(blob_store.list()) == []

    async def test_presigned_url_is_a_url_or_none(self, blob_store: BlobStore) -> None:
        """A presigned URL is None (no support) or a non-empty string."""
        await blob_store.write("k", stream(b"v"))
        url = await blob_store.presigned_url("k", 60)
        assert url is None or (isinstance(url, str) and url)

    async def test_purge_staged_keeps_complete_objects(self, blob_store: BlobStore) -> None:
        """Purging unfinished writes, however late the cutoff, never removes a stored object."""
        await blob_store.write("kept/a", stream(b"complete"))
        with pytest.raises(OSError, match="went away"):
            await blob_store.write("kept/b", failing_stream(b"half"))
        later = datetime.now(UTC) + timedelta(days=365)
        assert await blob_store.purge_staged(later) >= 0
        assert await collect(blob_store.read("kept/a")) == b"complete"
        assert not await blob_store.exists("kept/b")
        assert await blob_store.purge_staged(later) == 0
