"""The local store's two read paths: page-cache copies on the loop, and disk reads in threads."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from datadl.adapters.storage import FsspecBlobStore
from datadl.adapters.storage import fsspec as local
from datadl.domain.errors import FileCorrupted
from datadl.testing.builders import collect, stream

CHUNK = 64 * 1024
DATA = random.Random(11).randbytes(10 * CHUNK + 17)


@pytest.fixture
def store(tmp_path: Path) -> FsspecBlobStore:
    return FsspecBlobStore.from_url(f"file://{tmp_path}", chunk_size=CHUNK)


@pytest.fixture
def cached_reads() -> Iterator[list[int]]:
    """Counts the reads served from the page cache on the event loop."""
    served: list[int] = []
    real = local._pread_cached

    def counting(fd: int, offset: int, length: int) -> bytes | None:
        chunk = real(fd, offset, length)
        if chunk is not None:
            served.append(offset)
        return chunk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local, "_pread_cached", counting)
        yield served


@pytest.mark.skipif(not local._NOWAIT_WORKS, reason="no RWF_NOWAIT on this platform")
async def test_a_cached_file_is_read_on_the_loop(
    store: FsspecBlobStore, cached_reads: list[int]
) -> None:
    await store.write("k", stream(DATA))
    assert await collect(store.read("k", 5, len(DATA) - 3)) == DATA[5:-3]
    wanted = len(DATA) - 8
    assert len(cached_reads) == -(-wanted // CHUNK)  # every chunk, none through a thread


@pytest.mark.parametrize("cached_chunks", [0, 1, 4, 9])
async def test_a_read_that_leaves_the_page_cache_hands_over_exactly(
    store: FsspecBlobStore, cached_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever chunk first misses the cache, the bytes that follow are the file's."""
    await store.write("k", stream(DATA))
    calls = 0

    def cache_then_disk(fd: int, offset: int, length: int) -> bytes | None:
        nonlocal calls
        calls += 1
        return os.pread(fd, length, offset) if calls <= cached_chunks else None

    monkeypatch.setattr(local, "_pread_cached", cache_then_disk)
    assert await collect(store.read("k")) == DATA
    assert (
        await collect(store.read("k", CHUNK - 1, 3 * CHUNK + 1)) == DATA[CHUNK - 1 : 3 * CHUNK + 1]
    )


async def test_a_file_cut_short_before_the_thread_takes_over_is_corrupted(
    store: FsspecBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader thread checks the size the read began with: a shorter file is no clean end."""
    await store.write("k", stream(DATA))
    chunks = store.read("k")
    assert await anext(chunks) == DATA[:CHUNK]
    os.truncate(tmp_path / "k", 2 * CHUNK)
    monkeypatch.setattr(local, "_pread_cached", lambda fd, offset, length: None)
    with pytest.raises(FileCorrupted):
        async for _ in chunks:
            pass
