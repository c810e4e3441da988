"""The BlobStore contract, and what the storage issue asks beyond it, on local, memory and S3."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from datadl.adapters.storage import FsspecBlobStore, check_storage_key
from datadl.domain.errors import FileCorrupted, FileMissing, PayloadTooLarge, StorageUnavailable
from datadl.ports.storage import BlobStore
from datadl.testing.builders import collect, failing_stream, stream
from datadl.testing.contracts import BlobStoreContract

CHUNK = 256 * 1024
PART = 5 * 1024 * 1024  # the smallest S3 part, so that a few MiB already go multipart
CREDENTIALS = {"key": "testing", "secret": "testing", "region": "us-east-1"}

# moto runs in a child process: it keeps whole objects in memory and joins multipart
# parts there, which would swamp the RSS measured here, and its threads would compete
# with the tests for the GIL. Stopping it also really closes its socket.
_MOTO_CHILD = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


class MotoProcess:
    """A moto S3 server on 127.0.0.1 and an ephemeral port, in a child process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the moto server did not start")
        self.endpoint_url = f"http://127.0.0.1:{int(line)}"

    def admin(self) -> Any:
        """A plain boto3 client on this server, for setting up and inspecting buckets."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def stop(self) -> None:
        """Stop the server and reap the child; it exits when its stdin closes."""
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoProcess]:
    server = MotoProcess()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_admin(moto: MotoProcess) -> Iterator[Any]:
    client = moto.admin()
    yield client
    client.close()


@attrs.define
class Backend:
    """One store under test with what a test needs to look behind it."""

    kind: str
    url: str
    store: FsspecBlobStore
    staged: Callable[[], list[str]]
    raw_keys: Callable[[], list[str]]
    root: Path | None = None
    bucket: str | None = None
    admin: Any = None


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _memory_fs() -> Any:
    import fsspec

    return fsspec.filesystem("memory")


def s3_options(endpoint_url: str, **extra: Any) -> dict[str, Any]:
    """The s3_options of a store on a moto server."""
    return {"endpoint_url": endpoint_url, **CREDENTIALS, "part_size": PART, **extra}


def _s3_staged(s3_admin: Any, bucket: str) -> list[str]:
    uploads = s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [f"multipart:{upload['Key']}" for upload in uploads]


def _s3_keys(s3_admin: Any, bucket: str) -> list[str]:
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(params=["file", "memory", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "file":
        root = tmp_path / "blobs"
        url = f"file://{root}"
        store = FsspecBlobStore.from_url(url, chunk_size=CHUNK)
        yield Backend(
            kind,
            url,
            store,
            staged=lambda: _files_under(root / ".tmp") if (root / ".tmp").exists() else [],
            raw_keys=lambda: _files_under(root),
            root=root,
        )
        return
    if kind == "memory":
        # fsspec's memory filesystem is one dictionary per process: a root per test.
        name = f"datadl-test-{uuid.uuid4().hex}"
        fs = _memory_fs()
        url = f"memory://{name}"
        store = FsspecBlobStore.from_url(url, chunk_size=CHUNK)

        def memory_keys(under: str = "") -> list[str]:
            base = f"/{name}/"
            return sorted(k[len(base) :] for k in fs.store if k.startswith(base + under))

        try:
            yield Backend(
                kind, url, store, staged=lambda: memory_keys(".tmp/"), raw_keys=memory_keys
            )
        finally:
            if fs.exists(f"/{name}"):
                fs.rm(f"/{name}", recursive=True)
        return
    moto: MotoProcess = request.getfixturevalue("moto")
    admin = request.getfixturevalue("s3_admin")
    bucket = f"datadl-{uuid.uuid4().hex[:20]}"
    admin.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}"
    store = FsspecBlobStore.from_url(
        url, chunk_size=CHUNK, s3_options=s3_options(moto.endpoint_url)
    )
    try:
        yield Backend(
            kind,
            url,
            store,
            staged=lambda: _s3_staged(admin, bucket),
            raw_keys=lambda: _s3_keys(admin, bucket),
            bucket=bucket,
            admin=admin,
        )
    finally:
        await store.aclose()


@pytest.fixture
def blob_store(backend: Backend) -> BlobStore:
    return backend.store


class TestFsspecBlobStore(BlobStoreContract):
    """The shipped BlobStore suite on a local folder, fsspec memory and S3 (moto)."""

    read_chunk_limit = CHUNK


# --- ranges -----------------------------------------------------------------------------

_SIZE = 3 * CHUNK + 7
_DATA = random.Random(7).randbytes(_SIZE)
_EDGES = (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, _SIZE - 1, _SIZE, _SIZE + 1)


async def test_ranges_at_every_chunk_boundary(backend: Backend) -> None:
    """Every [start, end) over the edges of the blob and of its chunks reads exact bytes."""
    store = backend.store
    await store.write("r", stream(_DATA[:1000], _DATA[1000:]))
    for start in _EDGES:
        for end in (None, *_EDGES):
            got = await collect(store.read("r", start, end))
            assert got == _DATA[start:end], (start, end)


async def test_ranges_of_an_empty_blob(backend: Backend) -> None:
    """An empty blob yields nothing for any range, from any start."""
    await backend.store.write("e", stream())
    for start, end in ((0, None), (0, 0), (0, 1), (1, None), (5, 9)):
        assert await collect(backend.store.read("e", start, end)) == b""


async def test_negative_ranges_are_refused(backend: Backend) -> None:
    """A negative start or end is a programming error: ValueError."""
    await backend.store.write("k", stream(b"abc"))
    with pytest.raises(ValueError, match="negative"):
        await collect(backend.store.read("k", -1))
    with pytest.raises(ValueError, match="negative"):
        await collect(backend.store.read("k", 0, -2))


async def test_a_read_abandoned_midway_releases_its_file(backend: Backend) -> None:
    """Closing a read early ends it cleanly and the blob stays readable and deletable."""
    await backend.store.write("k", stream(_DATA))
    chunks = backend.store.read("k")
    assert await anext(chunks) == _DATA[:CHUNK]
    await chunks.aclose()
    assert await collect(backend.store.read("k", 5, 10)) == _DATA[5:10]
    await backend.store.delete("k")
    assert not await backend.store.exists("k")


async def test_a_blob_that_shrinks_while_read_is_corrupted(backend: Backend) -> None:
    """A blob cut short under a running read ends it with FileCorrupted, never a clean end."""
    if backend.kind == "s3":
        pytest.skip("one S3 GET serves a read: the object cannot change under it")
    data = bytes(range(256)) * (8 * CHUNK // 256)
    await backend.store.write("k", stream(data))
    chunks = backend.store.read("k")
    assert await anext(chunks) == data[:CHUNK]
    if backend.root is not None:
        os.truncate(backend.root / "k", CHUNK + 100)
    else:
        await backend.store.write("k", stream(data[: CHUNK + 100]))
    with pytest.raises(FileCorrupted):
        async for _ in chunks:
            pass


async def test_many_concurrent_long_reads(backend: Backend) -> None:
    """More concurrent long reads than reader threads all return exact bytes."""
    data = random.Random(5).randbytes(4 * CHUNK + 3)
    await backend.store.write("k", stream(data))
    results = await asyncio.gather(*(collect(backend.store.read("k", i)) for i in range(80)))
    assert results == [data[i:] for i in range(80)]


# --- the 300 MB file --------------------------------------------------------------------

_BIG = 300 * 1024 * 1024
_BLOCK = 1024 * 1024
_RSS_BUDGET = 64 * 1024 * 1024


def _block(index: int) -> bytes:
    return hashlib.shake_128(index.to_bytes(8, "big")).digest(_BLOCK)


def _expected(start: int, end: int) -> bytes:
    first, last = start // _BLOCK, (end - 1) // _BLOCK
    joined = b"".join(_block(i) for i in range(first, last + 1))
    return joined[start - first * _BLOCK : end - first * _BLOCK]


async def _big_stream() -> AsyncIterator[bytes]:
    for index in range(_BIG // _BLOCK):
        yield _block(index)


def _reset_peak_rss() -> bool:
    # Linux lets a process reset its own peak RSS (VmHWM); elsewhere the lifetime peak is used.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return _peak_rss()


@pytest.mark.slow
async def test_a_300_mb_blob_reads_in_random_ranges_in_constant_memory(backend: Backend) -> None:
    """Writing 300 MB and reading 50 random ranges of it grow the peak RSS by under 64 MB."""
    store = backend.store
    exact = _reset_peak_rss()
    before = _current_rss() if exact else _peak_rss()
    stored = await store.write("big", _big_stream())
    written_peak = _peak_rss()
    assert stored.size == _BIG
    if backend.kind != "memory":  # the memory store holds the 300 MB by design
        assert written_peak - before < _RSS_BUDGET, (written_peak - before) / 2**20
    exact = _reset_peak_rss()
    before = _current_rss() if exact else _peak_rss()
    rng = random.Random(300)
    for _ in range(50):
        start = rng.randrange(_BIG)
        end = min(_BIG, start + rng.randrange(1, 4 * _BLOCK))
        assert await collect(store.read("big", start, end)) == _expected(start, end)
    tail = await collect(store.read("big", _BIG - 10))
    assert tail == _expected(_BIG - 10, _BIG)
    read_peak = _peak_rss()
    assert read_peak - before < _RSS_BUDGET, (read_peak - before) / 2**20


# --- atomic visibility and interrupted writes --------------------------------------------


async def _gated(
    first: bytes, gate: asyncio.Event, reached: asyncio.Event, rest: bytes
) -> AsyncIterator[bytes]:
    yield first
    reached.set()
    await gate.wait()
    yield rest


async def test_a_write_is_invisible_until_complete(backend: Backend) -> None:
    """Midway through a multipart-sized write the key still shows its old object, then the new."""
    store = backend.store
    await store.write("k", stream(b"old"))
    gate, reached = asyncio.Event(), asyncio.Event()
    new = random.Random(1).randbytes(PART + CHUNK)
    task = asyncio.create_task(store.write("k", _gated(new[:-10], gate, reached, new[-10:])))
    await reached.wait()
    await asyncio.sleep(0.2)  # let the first part reach the backend
    assert await collect(store.read("k")) == b"old"
    assert (await store.stat("k")).size == 3
    assert [key async for key in store.list()] == ["k"]
    if backend.kind == "s3":
        # S3 is written in place: the staged object is an open multipart upload.
        assert backend.staged() == ["multipart:k"]
    else:
        assert len(backend.staged()) == 1
    gate.set()
    stored = await task
    assert stored.size == len(new)
    assert await collect(store.read("k")) == new
    assert backend.staged() == []


async def test_an_interrupted_write_leaves_nothing_staged(backend: Backend) -> None:
    """A stream that fails after several parts leaves neither the key nor staged bytes."""
    big = b"x" * (2 * PART + 3)
    with pytest.raises(OSError, match="went away"):
        await backend.store.write("k", failing_stream(big, big))
    assert not await backend.store.exists("k")
    assert backend.staged() == []
    assert backend.raw_keys() == []


async def test_purge_staged_removes_what_a_dead_writer_left(backend: Backend) -> None:
    """Staged bytes of a write that never ends go with purge_staged once old enough, not before."""
    gate, reached = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        backend.store.write("k", _gated(b"y" * (PART + 1), gate, reached, b"z"))
    )
    try:
        await reached.wait()
        for _ in range(200):  # the first part reaches the backend in the background
            if backend.staged():
                break
            await asyncio.sleep(0.05)
        staged = backend.staged()
        assert staged, "the gated write should have staged its first part"
        now = datetime.now(UTC)
        if backend.kind != "s3":  # moto reports every upload as initiated in 2010
            assert await backend.store.purge_staged(now - timedelta(hours=1)) == 0
            assert backend.staged() == staged
        assert await backend.store.purge_staged(now + timedelta(hours=1)) == len(staged)
        assert backend.staged() == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not await backend.store.exists("k")
    assert await backend.store.purge_staged(datetime.now(UTC) + timedelta(hours=1)) == 0


async def test_a_cancelled_write_leaves_nothing_staged(backend: Backend) -> None:
    """Cancelling a write midway (a client gone) cleans the staged bytes and stores nothing."""
    gate, reached = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        backend.store.write("k", _gated(b"y" * (PART + 1), gate, reached, b"z"))
    )
    await reached.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the shielded clean-up finishes on its own
    assert not await backend.store.exists("k")
    assert backend.staged() == []
    assert backend.raw_keys() == []


async def test_the_size_limit_stops_a_multipart_write(backend: Backend) -> None:
    """Passing max_bytes after parts were sent aborts them: no key, nothing staged."""
    chunk = b"p" * CHUNK
    limit = 2 * PART

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield chunk

    with pytest.raises(PayloadTooLarge):
        await backend.store.write("k", endless(), max_bytes=limit)
    assert backend.staged() == []
    assert backend.raw_keys() == []


async def test_a_large_write_reports_its_hash(backend: Backend) -> None:
    """A write of many parts in uneven chunks reports the size and SHA-256 of the whole."""
    rng = random.Random(3)
    parts = [rng.randbytes(rng.randrange(1, 3 * CHUNK)) for _ in range(60)]
    data = b"".join(parts)
    stored = await backend.store.write("a/b", stream(*parts))
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert await collect(backend.store.read("a/b")) == data
    assert backend.raw_keys() == ["a/b"]


# --- listing, deletion, stat ------------------------------------------------------------


async def test_listing_is_sorted_and_hides_staged_writes(backend: Backend) -> None:
    """Keys list in code-point order, by prefix, without a write that is still staged."""
    keys = ["a-b", "a/b", "a0", "é/1", "z", "a/b2/c"]
    for key in keys:
        await backend.store.write(key, stream(key.encode()))
    gate, reached = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(backend.store.write("a/staged", _gated(b"s", gate, reached, b"")))
    await reached.wait()
    assert [k async for k in backend.store.list()] == sorted(keys)
    assert [k async for k in backend.store.list("a/")] == ["a/b", "a/b2/c"]
    assert [k async for k in backend.store.list("a/b")] == ["a/b", "a/b2/c"]
    assert [k async for k in backend.store.list("a/b2/")] == ["a/b2/c"]
    gate.set()
    await task
    assert "a/staged" in [k async for k in backend.store.list("a/")]


@pytest.mark.parametrize("prefix", ["/a", "../", "a/../", "a\\b", "s3::x", "x\x00"])
async def test_unsafe_prefixes_are_refused(backend: Backend, prefix: str) -> None:
    """A listing prefix obeys the key rules: no root, no climbing, no chains."""
    with pytest.raises(ValueError, match=r"."):
        [k async for k in backend.store.list(prefix)]


async def test_listing_pages_through_many_keys(backend: Backend) -> None:
    """More keys than one S3 listing page (1000) all come back, in order."""
    if backend.kind != "s3":
        pytest.skip("only S3 lists in pages")
    keys = sorted(f"many/{i:04d}" for i in range(1005))
    for key in keys:
        backend.admin.put_object(Bucket=backend.bucket, Key=key, Body=b"")
    assert [k async for k in backend.store.list("many/")] == keys


async def test_delete_then_write_again(backend: Backend) -> None:
    """A deleted key can be written again, and deleting twice is fine."""
    await backend.store.write("d/k", stream(b"1"))
    await backend.store.delete("d/k")
    await backend.store.delete("d/k")
    assert not await backend.store.exists("d/k")
    await backend.store.write("d/k", stream(b"2"))
    assert await collect(backend.store.read("d/k")) == b"2"


async def test_a_folder_is_not_an_object(backend: Backend) -> None:
    """A prefix that only holds other keys does not exist as an object of its own."""
    await backend.store.write("dir/k", stream(b"1"))
    assert not await backend.store.exists("dir")
    with pytest.raises(FileMissing):
        await backend.store.stat("dir")
    with pytest.raises(FileMissing):
        await collect(backend.store.read("dir"))
    await backend.store.delete("dir")
    assert await backend.store.exists("dir/k")


async def test_stat_has_a_recent_utc_time(backend: Backend) -> None:
    """The modification time is aware UTC and close to now; S3 also gives an ETag."""
    await backend.store.write("k", stream(b"hello"))
    stat = await backend.store.stat("k")
    assert stat.modified_at is not None
    assert stat.modified_at.utcoffset() is not None
    assert abs(stat.modified_at.timestamp() - time.time()) < 60
    if backend.kind == "s3":
        assert stat.etag
    else:
        assert stat.etag is None


# --- presigned URLs -----------------------------------------------------------------------


async def test_presigned_url_serves_the_bytes(backend: Backend) -> None:
    """On S3 a presigned URL fetched with a plain HTTP client gives the bytes; elsewhere None."""
    await backend.store.write("p/data.csv", stream(b"a,b\n1,2\n"))
    url = await backend.store.presigned_url("p/data.csv", 60)
    if backend.kind != "s3":
        assert url is None
        return
    assert url is not None
    assert url.startswith("http://127.0.0.1:")
    assert "X-Amz-Expires=60" in url

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own server
            body: bytes = response.read()
            return body

    assert await asyncio.to_thread(fetch) == b"a,b\n1,2\n"


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
async def test_presigned_url_expiry_is_bounded(backend: Backend, expires_in: int) -> None:
    """An expiry outside 1 second .. 7 days is refused."""
    with pytest.raises(ValueError, match="expires_in"):
        await backend.store.presigned_url("k", expires_in)


# --- keys and URLs ----------------------------------------------------------------------

_BAD_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "a/../../b",
    "a/..",
    "a\\b",
    "a\x00b",
    "a\nb",
    "s3::bkt/k",
    "memory::x",
    "file:///etc/passwd",
    "s3://bucket/key",
    "c:/windows",
    "a//b",
    "a/./b",
    "a/",
    ".tmp/x",
    "x" * 1025,
]


@pytest.mark.parametrize("key", _BAD_KEYS)
def test_unsafe_keys_fail_validation(key: str) -> None:
    """The key rules refuse each unsafe shape with ValueError."""
    with pytest.raises(ValueError, match=r"."):
        check_storage_key(key)


@pytest.mark.parametrize("key", ["a", "ds/1/v2/data.csv", "blobs/ab/abcdef", "é/ü", "a.b/.c"])
def test_safe_keys_pass_validation(key: str) -> None:
    """Ordinary relative keys, dotted names and non-ASCII names are accepted."""
    assert check_storage_key(key) == key


@pytest.mark.parametrize("operation", ["read", "stat", "exists", "delete", "url"])
@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a\\..\\b"])
async def test_every_operation_refuses_climbing_keys(
    backend: Backend, operation: str, key: str
) -> None:
    """No operation accepts a key that climbs or is absolute."""
    store = backend.store
    calls: dict[str, Callable[[], Any]] = {
        "read": lambda: collect(store.read(key)),
        "stat": lambda: store.stat(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "url": lambda: store.presigned_url(key, 60),
    }
    with pytest.raises(ValueError, match=r"."):
        await calls[operation]()


async def test_storage_urls_round_trip(backend: Backend) -> None:
    """A key's storage URL names the same key in the same store."""
    url = backend.store.url_for("ds/1/data.csv")
    assert url.startswith(backend.url + "/")
    assert backend.store.key_from_url(url) == "ds/1/data.csv"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/ds/1",
        "https://example.com/ds/1",
        "memory::file:///etc/passwd",
        "simplecache::s3://bucket/k",
        "ftp://host/k",
        "gcs://bucket/k",
        "file:///etc/passwd",
        "memory://elsewhere/k",
        "s3://other-bucket/k",
        "",
        "ds/1/data.csv",
    ],
)
async def test_foreign_storage_urls_are_refused(backend: Backend, url: str) -> None:
    """A URL of another protocol, chain, root or bucket names no key of this store."""
    with pytest.raises(ValueError, match=r"."):
        backend.store.key_from_url(url)


async def test_urls_climbing_out_of_the_root_are_refused(backend: Backend) -> None:
    """Inside-looking URLs that climb out, or hide a chain or a query, are refused."""
    inside = backend.store.url_for("k")
    for url in (
        inside.removesuffix("/k") + "/../k",
        inside.removesuffix("/k") + "/a/../../k",
        inside + "?versionId=1",
        inside.replace("://", "::", 1),
        backend.url,
    ):
        with pytest.raises(ValueError, match=r"."):
            backend.store.key_from_url(url)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://example.com/blobs", ("file", "memory", "s3")),
        ("https://example.com/blobs", ("file", "memory", "s3")),
        ("memory::file:///tmp/x", ("file", "memory", "s3")),
        ("simplecache::file:///tmp/x", ("file", "memory", "s3")),
        ("file:///tmp/x", ("memory", "s3")),
        ("s3://bucket", ("file",)),
        ("memory://x", ("http", "memory")),
        ("file://relative/path", ("file",)),
        ("file:///", ("file",)),
        ("file:///tmp/../etc", ("file",)),
        ("memory://", ("memory",)),
        ("memory://a/../b", ("memory",)),
        ("s3://Bad_Bucket", ("s3",)),
        ("s3://bucket/a/../b", ("s3",)),
        ("s3://bucket/k?versionId=1", ("s3",)),
        ("no-scheme/x", ("file",)),
    ],
)
def test_store_urls_outside_the_allowlist_are_refused(url: str, allowed: tuple[str, ...]) -> None:
    """from_url refuses chains, HTTP, unlisted protocols, relative or climbing roots."""
    with pytest.raises(ValueError, match=r"."):
        FsspecBlobStore.from_url(url, allowed_protocols=allowed)


def test_s3_options_are_checked() -> None:
    """Unknown S3 options, tiny parts, and S3 options on another backend are refused."""
    with pytest.raises(ValueError, match="unknown"):
        FsspecBlobStore.from_url("s3://bucket", s3_options={"endpoint": "x"})
    with pytest.raises(ValueError, match="part_size"):
        FsspecBlobStore.from_url("s3://bucket", s3_options={"part_size": 1024})
    with pytest.raises(ValueError, match="s3_options"):
        FsspecBlobStore.from_url("memory://x", s3_options={"region": "eu-west-1"})


# --- local confinement --------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> tuple[FsspecBlobStore, Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    return FsspecBlobStore.from_url(f"file://{root}", chunk_size=CHUNK), root, outside


async def test_a_symlinked_file_pointing_outside_is_refused(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """A symlink in the root to a file outside is neither read, stat'ed, written nor deleted."""
    store, root, outside = local
    (root / "link").symlink_to(outside / "secret")
    with pytest.raises(StorageUnavailable):
        await collect(store.read("link"))
    with pytest.raises(StorageUnavailable):
        await store.stat("link")
    with pytest.raises(StorageUnavailable):
        await store.exists("link")
    with pytest.raises(StorageUnavailable):
        await store.write("link", stream(b"overwritten"))
    with pytest.raises(StorageUnavailable):
        await store.delete("link")
    assert (outside / "secret").read_bytes() == b"secret"
    assert [k async for k in store.list()] == []
    assert not (root / ".tmp").exists() or not any((root / ".tmp").iterdir())


async def test_a_symlinked_folder_pointing_outside_is_refused(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """Keys through a symlinked folder that leads outside the root are refused and never listed."""
    store, root, outside = local
    (root / "dir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageUnavailable):
        await collect(store.read("dir/secret"))
    with pytest.raises(StorageUnavailable):
        await store.write("dir/new/file", stream(b"x"))
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert [k async for k in store.list()] == []
    with pytest.raises(StorageUnavailable):
        [k async for k in store.list("dir/")]


async def test_a_symlink_inside_the_root_is_followed(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """A symlink whose target stays under the root is served, but listed only by its target."""
    store, root, _ = local
    await store.write("real/k", stream(b"inside"))
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert await collect(store.read("alias/k")) == b"inside"
    assert [k async for k in store.list()] == ["real/k"]


async def test_a_symlinked_root_is_resolved_once(tmp_path: Path) -> None:
    """A root given through a symlink is resolved, and URLs under either path map to keys."""
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real", target_is_directory=True)
    store = FsspecBlobStore.from_url(f"file://{tmp_path / 'via'}")
    await store.write("k", stream(b"v"))
    assert (tmp_path / "real" / "k").read_bytes() == b"v"
    assert store.key_from_url(f"file://{tmp_path / 'via'}/k") == "k"
    assert store.key_from_url(store.url_for("k")) == "k"


def test_a_file_url_outside_the_root_is_refused(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """file:// URLs beside, above or merely sharing a name prefix with the root are refused."""
    store, root, outside = local
    for url in (
        f"file://{outside}/secret",
        f"file://{root.parent}",
        f"file://{root}",
        f"file://{root}-other/k",
        f"file://{root}/../outside/secret",
    ):
        with pytest.raises(ValueError, match=r"."):
            store.key_from_url(url)


# --- error translation --------------------------------------------------------------------


async def test_a_stopped_s3_server_is_storage_unavailable_quickly() -> None:
    """With the S3 endpoint gone, each operation fails within seconds with StorageUnavailable."""
    server = MotoProcess()
    admin = server.admin()
    try:
        admin.create_bucket(Bucket="gone")
    finally:
        admin.close()
    # Default retry settings: what production gets.
    store = FsspecBlobStore.from_url("s3://gone", s3_options=s3_options(server.endpoint_url))
    operations: dict[str, Callable[[], Any]] = {
        "read": lambda: collect(store.read("k")),
        "stat": lambda: store.stat("k"),
        "exists": lambda: store.exists("k"),
        "write": lambda: store.write("k2", stream(b"v")),
        "list": lambda: collect(store.list()),
        "delete": lambda: store.delete("k"),
        "presigned_url": lambda: store.presigned_url("k", 60),
    }
    try:
        await store.write("k", stream(b"v"))
        server.stop()
        for name, operation in operations.items():
            started = time.monotonic()
            if name == "presigned_url":
                assert await operation()  # signing is local: no server needed
                continue
            with pytest.raises(StorageUnavailable):
                await operation()
            assert time.monotonic() - started < 6, name
    finally:
        server.stop()
        await store.aclose()


async def test_an_unreachable_endpoint_is_storage_unavailable(moto: MotoProcess) -> None:
    """A store whose endpoint refuses connections raises StorageUnavailable, not a driver error."""
    store = FsspecBlobStore.from_url(
        "s3://nobody", s3_options=s3_options(f"http://127.0.0.1:{_free_port()}")
    )
    async with store:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            await store.stat("k")
        assert time.monotonic() - started < 5
        assert caught.value.code == "storage_unavailable"
        assert caught.value.hint


def _free_port() -> int:
    # Bound and released: nothing listens there afterwards, so connections are refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_missing_bucket_is_storage_unavailable(moto: MotoProcess) -> None:
    """A bucket that does not exist is a configuration fault, not a missing file."""
    store = FsspecBlobStore.from_url(
        "s3://no-such-bucket", s3_options=s3_options(moto.endpoint_url)
    )
    async with store:
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await store.stat("k")
        with pytest.raises(StorageUnavailable):
            await store.write("k", stream(b"v"))


async def test_an_s3_prefix_confines_keys(moto: MotoProcess, s3_admin: Any) -> None:
    """A store on s3://bucket/prefix sees and lists only the keys under its prefix."""
    bucket = f"datadl-{uuid.uuid4().hex[:20]}"
    s3_admin.create_bucket(Bucket=bucket)
    s3_admin.put_object(Bucket=bucket, Key="outside", Body=b"o")
    s3_admin.put_object(Bucket=bucket, Key="tenantx/k", Body=b"o")
    store = FsspecBlobStore.from_url(
        f"s3://{bucket}/tenant/", s3_options=s3_options(moto.endpoint_url)
    )
    async with store:
        await store.write("k", stream(b"in"))
        assert _s3_keys(s3_admin, bucket) == ["outside", "tenant/k", "tenantx/k"]
        assert [k async for k in store.list()] == ["k"]
        assert not await store.exists("outside")
        assert store.url_for("k") == f"s3://{bucket}/tenant/k"
        with pytest.raises(ValueError, match="outside"):
            store.key_from_url(f"s3://{bucket}/tenantx/k")


def _chattr(flag: str, path: Path) -> None:
    chattr = shutil.which("chattr")
    assert chattr is not None
    subprocess.run([chattr, flag, str(path)], check=True, capture_output=True)


async def test_an_unreadable_local_file_is_storage_unavailable(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """A stored file with mode 000 reads as StorageUnavailable, not as a driver error."""
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode; see the immutable-file test")
    store, root, _ = local
    await store.write("k", stream(b"v"))
    (root / "k").chmod(0)
    try:
        with pytest.raises(StorageUnavailable, match="PermissionError"):
            await collect(store.read("k"))
    finally:
        (root / "k").chmod(0o644)


async def test_a_refused_local_operation_is_storage_unavailable(
    local: tuple[FsspecBlobStore, Path, Path],
) -> None:
    """A file and a folder the kernel refuses to change give StorageUnavailable with a hint."""
    store, root, _ = local
    await store.write("k", stream(b"v"))
    if os.geteuid() != 0:
        (root / ".tmp").chmod(0o500)
        undo: Callable[[], None] = lambda: (root / ".tmp").chmod(0o700)  # noqa: E731
    else:
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr to refuse root")
        try:
            _chattr("+i", root / "k")
            _chattr("+i", root / ".tmp")
        except subprocess.CalledProcessError:
            pytest.skip("this file system has no immutable flag")

        def undo() -> None:
            _chattr("-i", root / "k")
            _chattr("-i", root / ".tmp")

    try:
        with pytest.raises(StorageUnavailable, match="PermissionError") as caught:
            await store.write("k2", stream(b"v"))
        assert "permission" in caught.value.hint
        if os.geteuid() == 0:
            with pytest.raises(StorageUnavailable, match="PermissionError"):
                await store.delete("k")
        assert await collect(store.read("k")) == b"v"
    finally:
        undo()


# --- configuration ------------------------------------------------------------------------


async def test_settings_point_the_container_at_an_s3_endpoint(
    moto: MotoProcess, s3_admin: Any, tmp_path: Path
) -> None:
    """DATADL_STORAGE_URL and the DATADL_S3_* variables give a working S3 store; secrets hide."""
    from datadl.container import build_container
    from datadl.settings import Settings

    bucket = f"datadl-{uuid.uuid4().hex[:20]}"
    s3_admin.create_bucket(Bucket=bucket)
    settings = Settings.load(
        environ={
            "DATADL_DATA_DIR": str(tmp_path),
            "DATADL_STORAGE_URL": f"s3://{bucket}/datasets",
            "DATADL_S3_ENDPOINT_URL": moto.endpoint_url,
            "DATADL_S3_REGION": "us-east-1",
            "DATADL_S3_ACCESS_KEY_ID": "testing",
            "DATADL_S3_SECRET_ACCESS_KEY": "testing",
        }
    )
    assert "testing" not in repr(settings)
    store = build_container(settings).blobs()
    try:
        await store.write("a/b.csv", stream(b"x,y\n1,2\n"))
        assert await collect(store.read("a/b.csv")) == b"x,y\n1,2\n"
    finally:
        await store.aclose()
    assert _s3_keys(s3_admin, bucket) == ["datasets/a/b.csv"]
