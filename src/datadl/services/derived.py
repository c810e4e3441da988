"""The derived-file cache: each converted format stored once per content, options and engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator

import attrs

from datadl.domain.errors import FileMissing, Unavailable, UnsupportedFormat
from datadl.domain.model import Dataset, DatasetFile, DatasetVersion, FileFormat
from datadl.ports.cache import Cache
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Entropy
from datadl.ports.storage import BlobStore
from datadl.ports.tables import ConvertOptions, TableEngine
from datadl.services._shared import policy_for
from datadl.services.downloads import Representation

logger = logging.getLogger(__name__)

#: Every derived object lives under this prefix, apart from the datasets' own files.
DERIVED_PREFIX = "derived/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DELIMITED = (FileFormat.CSV, FileFormat.TSV)
_PLAIN = ConvertOptions()


@attrs.frozen
class DerivedBlob:
    """Where a finished derivative is stored and what its bytes are."""

    key: str
    size: int
    sha256: str


def _filename_for(filename: str, extension: str) -> str:
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return f"{stem}.{extension}"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class DerivedFiles:
    """Converted files kept in the ``BlobStore``, built once and then read like any file.

    A derivative is identified by the source content's sha256, the engine version, the
    target format and the conversion options (formula neutralisation). Its bytes are
    written under a fresh key ``derived/<sha256>/<engine>/<variant>/<id>.<ext>``, and
    only then is the pointer ``derived/<sha256>/<engine>/<variant>.json`` (key, size,
    sha256) written: the pointer is the commit, so a reader never sees a half-written
    derivative, and two writers never overwrite each other's bytes.

    Calling the instance with a dataset, a version and a format is the download
    service's ``Deriver``: it applies the dataset's effective policy (formula
    neutralisation for csv and tsv) and returns the ``Representation`` to serve, with
    the derivative's size and sha256, so converted downloads have a length, an ETag and
    ranges. A request for the file's own format needing no neutralisation is served
    from the original bytes.

    Concurrent requests for the same derivative in this process share one conversion.
    Across processes, ``cache`` (when given) holds a lock, renewed every third of
    ``lock_seconds`` while the conversion runs, so that other workers wait for the
    pointer, polling every ``poll_seconds``, instead of converting too; when the lock is
    released without a pointer (a failure) or lapses (its holder died) they build it
    themselves.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        blobs: BlobStore,
        engine: TableEngine,
        entropy: Entropy,
        cache: Cache | None = None,
        lock_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        memo_size: int = 4096,
    ) -> None:
        self._catalog = catalog
        self._blobs = blobs
        self._engine = engine
        self._entropy = entropy
        self._cache = cache
        self._lock_seconds = lock_seconds
        self._poll_seconds = poll_seconds
        self._memo: OrderedDict[str, DerivedBlob] = OrderedDict()
        self._memo_size = memo_size
        self._inflight: dict[str, asyncio.Future[DerivedBlob]] = {}

    # --- the Deriver ----------------------------------------------------------------------

    async def __call__(self, dataset: Dataset, version: DatasetVersion, fmt: str) -> Representation:
        try:
            target = FileFormat(fmt)
        except ValueError:
            raise UnsupportedFormat(
                f"Cannot convert to {fmt!r}.",
                hint="Use one of: " + ", ".join(f.value for f in FileFormat) + ".",
            ) from None
        policy = await policy_for(self._catalog, dataset)
        options = ConvertOptions(
            neutralize_formulas=policy.neutralize_formulas and target in _DELIMITED
        )
        file = version.file
        if target is file.format and not options.neutralize_formulas:
            return Representation.of_original(file, fmt)
        blob = await self.derive(file, target, options)
        return Representation(
            key=blob.key,
            size=blob.size,
            sha256=blob.sha256,
            media_type=target.media_type,
            filename=_filename_for(file.filename, target.extension),
            variant=fmt,
            verify=True,
        )

    # --- keys -----------------------------------------------------------------------------

    def base_key(self, file: DatasetFile, target: FileFormat, options: ConvertOptions) -> str:
        """The key stem of a derivative: ``derived/<sha256>/<engine>/<variant>``."""
        variant = target.value + ("-neutralized" if options.neutralize_formulas else "")
        return f"{derived_folder(file.sha256, self._engine.version)}/{variant}"

    # --- lookup and build -----------------------------------------------------------------

    async def find(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions = _PLAIN
    ) -> DerivedBlob | None:
        """The finished derivative, or None when there is none (or its bytes are gone)."""
        base = self.base_key(file, target, options)
        blob = self._memo.get(base)
        if blob is None:
            blob = await self._read_pointer(base)
            if blob is None:
                return None
        try:
            stat = await self._blobs.stat(blob.key)
        except FileMissing:
            self._memo.pop(base, None)
            return None
        if stat.size != blob.size:
            self._memo.pop(base, None)
            return None
        self._remember(base, blob)
        return blob

    async def derive(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions = _PLAIN
    ) -> DerivedBlob:
        """The derivative of ``file`` in ``target``: found, or converted now and stored.

        A caller that arrives while the same conversion runs waits for it; a caller that
        is cancelled does not cancel the conversion others wait for. Raises what the
        engine raises (``TooManyRows`` for an xlsx beyond a sheet, ``UnsupportedFormat``
        for a file it cannot parse) and storage errors.
        """
        found = await self.find(file, target, options)
        if found is not None:
            return found
        base = self.base_key(file, target, options)
        future = self._inflight.get(base)
        if future is None:
            future = asyncio.ensure_future(self._build(base, file, target, options))
            self._inflight[base] = future

            def done(f: asyncio.Future[DerivedBlob]) -> None:
                if self._inflight.get(base) is f:
                    del self._inflight[base]
                if not f.cancelled():
                    f.exception()  # retrieved here, so a build nobody awaits is not reported

            future.add_done_callback(done)
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Cancel the conversions still running (at shutdown) and wait for them to stop."""
        pending = list(self._inflight.values())
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _build(
        self, base: str, file: DatasetFile, target: FileFormat, options: ConvertOptions
    ) -> DerivedBlob:
        lock = f"derived-lock:{base}"
        while not await self._lock(lock):
            # Another process converts: wait for its pointer rather than convert twice. Its
            # lock is renewed while it works, so it lapses soon after a crash.
            await asyncio.sleep(self._poll_seconds)
            found = await self.find(file, target, options)
            if found is not None:
                return found
        async with renewed(self._cache, lock, self._lock_seconds):
            found = await self.find(file, target, options)
            if found is not None:
                return found
            key = f"{base}/{self._entropy.new_id()}.{target.extension}"
            stored = await self._blobs.write(key, self._engine.convert(file, target, options))
            blob = DerivedBlob(key=stored.key, size=stored.size, sha256=stored.sha256)
            pointer = {
                "key": blob.key,
                "size": blob.size,
                "sha256": blob.sha256,
                "source_sha256": file.sha256,
                "format": target.value,
                "engine_version": self._engine.version,
                "neutralize_formulas": options.neutralize_formulas,
            }
            await self._blobs.write(f"{base}.json", _once(json.dumps(pointer).encode()))
            self._remember(base, blob)
            logger.info(
                "derivative_built key=%s size=%d source_sha256=%s", blob.key, blob.size, file.sha256
            )
            return blob

    def _remember(self, base: str, blob: DerivedBlob) -> None:
        self._memo[base] = blob
        self._memo.move_to_end(base)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)

    async def _read_pointer(self, base: str) -> DerivedBlob | None:
        return await read_pointer(self._blobs, base)

    async def _lock(self, key: str) -> bool:
        if self._cache is None:
            return True
        try:
            return await self._cache.add(key, b"1", ttl_seconds=self._lock_seconds)
        except Unavailable:
            # Without the shared lock the worst case is converting twice, never wrong bytes.
            return True


@contextlib.asynccontextmanager
async def renewed(cache: Cache | None, key: str, ttl_seconds: float) -> AsyncIterator[None]:
    """Keep a lock taken with ``Cache.add`` alive while the block runs, then release it.

    The lock is renewed every third of ``ttl_seconds``, so a short ttl holds a long task
    and yet lapses soon after the holder dies. A cache outage only risks duplicate work.
    """
    if cache is None:
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl_seconds / 3)
            with contextlib.suppress(Unavailable):
                await cache.set(key, b"1", ttl_seconds=ttl_seconds)

    renewing = asyncio.ensure_future(renew())
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        with contextlib.suppress(Unavailable):
            await cache.delete(key)


def derived_folder(sha256: str, engine_version: str) -> str:
    """Where everything derived from one content by one engine version is stored."""
    engine = _UNSAFE.sub("_", engine_version) or "engine"
    return f"{DERIVED_PREFIX}{sha256}/{engine}"


def is_derived(key: str) -> bool:
    """Whether a storage key belongs to the derived-file cache."""
    return key.startswith(DERIVED_PREFIX)


async def read_pointer(blobs: BlobStore, base: str) -> DerivedBlob | None:
    """The derivative the pointer ``<base>.json`` commits, or None without a readable one."""
    try:
        raw = b"".join([chunk async for chunk in blobs.read(f"{base}.json")])
    except FileMissing:
        return None
    try:
        document = json.loads(raw)
        return DerivedBlob(
            key=str(document["key"]), size=int(document["size"]), sha256=str(document["sha256"])
        )
    except (ValueError, KeyError, TypeError):
        logger.warning("derivative_pointer_unreadable key=%s.json", base)
        return None
