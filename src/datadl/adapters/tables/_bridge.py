"""Bridges between the event loop's async byte streams and the worker threads that parse them."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, BinaryIO, Protocol, TypeVar

from datadl.domain.errors import DatadlError
from datadl.ports.storage import BlobStore

T = TypeVar("T")

#: How often a waiting worker thread looks whether it was told to stop (seconds).
_POLL_SECONDS = 0.1
#: Chunks the storage pump may read ahead of the parser.
_READ_AHEAD = 4
#: Converted chunks that may wait for a slow consumer.
_WRITE_BEHIND = 4
_SPOOL_CHUNK = 1 << 20


class Aborted(Exception):
    """The event loop side stopped listening; the worker thread winds down quietly."""


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_EOF = object()


class Input(Protocol):
    """Ways to read one stored file from a worker thread."""

    def stream(self) -> BinaryIO:
        """A fresh sequential reader from the first byte."""
        ...

    def random_access(self) -> BinaryIO:
        """A seekable reader that fetches only the ranges asked for."""
        ...

    def local_path(self) -> str:
        """A local copy of the whole file (spooled once per job)."""
        ...


class IoContext:
    """What a worker thread needs to reach storage through the event loop, and a stop flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop, blobs: BlobStore) -> None:
        self.loop = loop
        self.blobs = blobs
        self.cancelled = threading.Event()
        self.storage_error: DatadlError | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._spools: list[str] = []

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop from a worker thread and wait, honouring cancellation."""
        if self.cancelled.is_set() or self.loop.is_closed():
            coro.close()
            raise Aborted
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()
            raise Aborted from None
        while True:
            try:
                return future.result(timeout=_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if self.cancelled.is_set() or self.loop.is_closed():
                    future.cancel()
                    raise Aborted from None
            except DatadlError as exc:
                self.storage_error = exc
                raise

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start ``coro`` as a task on the loop (from a worker thread)."""

        async def _spawn() -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return task

        try:
            return self.call(_spawn())
        except Aborted:
            coro.close()
            raise

    def check(self) -> None:
        """Raise ``Aborted`` when the caller has gone away (between batches)."""
        if self.cancelled.is_set():
            raise Aborted

    def spool_path(self) -> str:
        """A new temporary file path removed when the job ends."""
        handle, path = tempfile.mkstemp(prefix="datadl-table-")
        os.close(handle)
        self._spools.append(path)
        return path

    def cleanup(self) -> None:
        """Remove the job's temporary files (called from the worker thread or after it)."""
        while self._spools:
            with contextlib.suppress(OSError):
                os.unlink(self._spools.pop())

    async def aclose(self) -> None:
        """Stop every storage task this job started and wait for them (on the loop)."""
        self.cancelled.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.cleanup()


class ByteStream(io.RawIOBase):
    """A blocking, read-only file over a stored object, fed by a bounded read-ahead queue."""

    def __init__(self, ctx: IoContext, key: str) -> None:
        super().__init__()
        self._ctx = ctx
        self._key = key
        self._pending: collections.deque[memoryview] = collections.deque()
        self._done = False
        # Bound to the loop on first use, so creating it in this thread is safe.
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=_READ_AHEAD)
        self._task = ctx.start(self._pump())

    async def _pump(self) -> None:
        queue = self._queue
        chunks = self._ctx.blobs.read(self._key)
        try:
            async for chunk in chunks:
                if chunk:
                    await queue.put(chunk)
            await queue.put(_EOF)
        except asyncio.CancelledError:
            # The stream was closed: free the chunks nobody will read, and let a parser
            # thread that still asks (a read-ahead) see the end instead of waiting forever.
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(_EOF)
            raise
        except Exception as exc:
            await queue.put(_Failure(exc))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _take(self) -> list[object]:
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            if not self._pending:
                if self._done:
                    break
                for item in self._ctx.call(self._take()):
                    if item is _EOF:
                        self._done = True
                    elif isinstance(item, _Failure):
                        self._done = True
                        if isinstance(item.exc, DatadlError):
                            self._ctx.storage_error = item.exc
                        raise item.exc
                    else:
                        self._pending.append(memoryview(item))  # type: ignore[arg-type]
                continue
            head = self._pending[0]
            take = min(len(head), len(target) - filled)
            target[filled : filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._pending.popleft()
            else:
                self._pending[0] = head[take:]
        return filled

    def close(self) -> None:
        self._pending.clear()
        if not self.closed and not self._task.done() and not self._ctx.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._ctx.loop.call_soon_threadsafe(self._task.cancel)
        super().close()


class RangeFile(io.RawIOBase):
    """A blocking, seekable file over a stored object that fetches only the ranges read."""

    def __init__(self, ctx: IoContext, key: str, size: int) -> None:
        super().__init__()
        self._ctx = ctx
        self._key = key
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    async def _fetch(self, start: int, end: int) -> bytes:
        parts = [chunk async for chunk in self._ctx.blobs.read(self._key, start, end)]
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        end = min(self._size, self._pos + len(target))
        if end <= self._pos:
            return 0
        data = self._ctx.call(self._fetch(self._pos, end))
        target[: len(data)] = data
        self._pos += len(data)
        return len(data)


class StoredInput:
    """One stored file, read from a worker thread in whichever way its format needs."""

    def __init__(self, ctx: IoContext, key: str, size: int) -> None:
        self._ctx = ctx
        self._key = key
        self._size = size
        self._local: str | None = None

    def stream(self) -> BinaryIO:
        return io.BufferedReader(ByteStream(self._ctx, self._key), buffer_size=_SPOOL_CHUNK)

    def random_access(self) -> BinaryIO:
        return RangeFile(self._ctx, self._key, self._size)  # type: ignore[return-value]

    def local_path(self) -> str:
        if self._local is None:
            path = self._ctx.spool_path()
            with self.stream() as source, open(path, "wb") as target:
                shutil.copyfileobj(source, target, _SPOOL_CHUNK)
            self._local = path
        return self._local


async def run_job(blobs: BlobStore, job: Callable[[IoContext], T]) -> T:
    """Run ``job`` in a worker thread; on cancellation tell it to stop and wait for it."""
    loop = asyncio.get_running_loop()
    ctx = IoContext(loop, blobs)

    def _guarded() -> T:
        try:
            return job(ctx)
        except BaseException as exc:
            preferred = _preferred(ctx, exc)
            if preferred is exc:
                raise
            raise preferred from exc
        finally:
            ctx.cleanup()

    future = loop.run_in_executor(None, _guarded)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        ctx.cancelled.set()
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # the job's Aborted is expected: retrieved, not reported
        raise
    finally:
        await ctx.aclose()


def _preferred(ctx: IoContext, exc: BaseException) -> BaseException:
    # A storage error raised inside a parser callback reaches us wrapped by the parser;
    # the caller must see the storage error itself.
    if ctx.storage_error is not None and exc is not ctx.storage_error:
        return ctx.storage_error
    return exc


async def stream_job(
    blobs: BlobStore, job: Callable[[IoContext, Callable[[bytes], None]], None]
) -> AsyncIterator[bytes]:
    """Run ``job`` in a worker thread and yield the chunks it emits, with back-pressure."""
    loop = asyncio.get_running_loop()
    ctx = IoContext(loop, blobs)
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=_WRITE_BEHIND)

    def emit(chunk: bytes) -> None:
        if chunk:
            ctx.call(queue.put(chunk))

    def _runner() -> None:
        try:
            job(ctx, emit)
            ctx.call(queue.put(_EOF))
        except Aborted:
            return
        except BaseException as exc:
            failure = _Failure(_preferred(ctx, exc))
            with contextlib.suppress(Aborted):
                ctx.call(queue.put(failure))
        finally:
            ctx.cleanup()

    future = loop.run_in_executor(None, _runner)
    try:
        while True:
            item = await queue.get()
            if item is _EOF:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        ctx.cancelled.set()
        while not queue.empty():
            queue.get_nowait()
        await asyncio.wait([future])
        await ctx.aclose()
