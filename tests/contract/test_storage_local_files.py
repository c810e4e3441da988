"""The LocalFiles capability: which stores hand out local files, and what they hand out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datadl.adapters.storage import FsspecBlobStore
from datadl.domain.errors import FileMissing, StorageUnavailable
from datadl.ports.storage import LocalFiles
from datadl.testing.builders import stream

DATA = os.urandom(100_000)


async def test_a_local_store_opens_its_objects_as_files(tmp_path: Path) -> None:
    """A file:// store opens a stored key as a readable binary file with the stored bytes."""
    store = FsspecBlobStore.from_url(f"file://{tmp_path}")
    assert isinstance(store, LocalFiles)
    await store.write("a/b.csv", stream(DATA))
    file = await store.open_local("a/b.csv")
    assert file is not None
    with file:
        assert file.read() == DATA


async def test_a_missing_key_is_file_missing(tmp_path: Path) -> None:
    """Opening a key that holds nothing raises FileMissing, as a read does."""
    store = FsspecBlobStore.from_url(f"file://{tmp_path}")
    with pytest.raises(FileMissing):
        await store.open_local("nothing-here")


async def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    """A key that resolves outside the root is never opened."""
    outside = tmp_path / "outside"
    outside.write_bytes(DATA)
    root = tmp_path / "root"
    store = FsspecBlobStore.from_url(f"file://{root}")
    (root / "link").symlink_to(outside)
    with pytest.raises(StorageUnavailable):
        await store.open_local("link")


async def test_a_memory_store_has_no_local_files() -> None:
    """Stores whose objects are not files on this machine answer None."""
    store = FsspecBlobStore.from_url("memory://local-files-test")
    await store.write("k", stream(DATA))
    assert await store.open_local("k") is None
