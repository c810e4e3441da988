"""Metadata and preview of datasets: profiles computed off the request path, cached by content."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs

from datadl.domain.access import Principal, can_administer, can_download
from datadl.domain.decision import Forbidden
from datadl.domain.errors import (
    AnalysisFailed,
    AnalysisPending,
    BadRequest,
    DatadlError,
    FileMissing,
    NotFound,
    Unavailable,
    UnsupportedFormat,
)
from datadl.domain.model import (
    Dataset,
    DatasetFile,
    DatasetStatus,
    DatasetVersion,
    FileFormat,
    Grant,
    Scope,
)
from datadl.domain.tables import Page, TableProfile
from datadl.ports.cache import Cache
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock
from datadl.ports.storage import BlobStore
from datadl.ports.tables import ConvertOptions, TableEngine
from datadl.services._shared import change_dataset, policy_for, require_scope, visible_dataset
from datadl.services.derived import DerivedFiles, derived_folder, renewed

logger = logging.getLogger(__name__)

#: The largest preview page.
MAX_PREVIEW_LIMIT = 1000
#: Rows anyone who may see a dataset may preview; deeper windows read like a download.
PREVIEW_SAMPLE_ROWS = 100
#: Bytes analysed per second, roughly, for the Retry-After estimate of a pending analysis.
_ANALYSIS_BYTES_PER_SECOND = 50_000_000


class InsightService:
    """Profiles (schema, statistics, quality) and previews of datasets.

    A profile is computed once per file content and engine version and kept in the
    ``Cache`` under ``insight:profile:<engine>:<sha256>`` (and, with ``blobs``, durably
    beside the derived files, ``derived/<sha256>/<engine>/profile.json``, which refills
    the cache after a restart or an eviction); the analysis runs off the
    request path (``schedule``) and records its outcome on the dataset: ``ready`` with
    its row and column counts, or ``failed`` with the reason. For inputs other than
    Parquet the analysis also builds a Parquet derivative (through ``derived``), from
    which deep preview pages are read by row group.

    ``retry_after`` is the least number of seconds a client is told to wait for a pending
    analysis; ``lock_seconds`` is how long one worker's claim on an analysis outlives the
    worker (it is renewed while the analysis runs, so it lapses that long after a crash);
    ``failure_ttl_seconds`` is how long the failure of a version that is no longer current
    is remembered;
    ``poll_seconds`` is how often a worker waiting on another's analysis looks for its
    outcome.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        cache: Cache,
        engine: TableEngine,
        clock: Clock,
        derived: DerivedFiles | None = None,
        blobs: BlobStore | None = None,
        retry_after: int = 2,
        lock_seconds: float = 60.0,
        profile_ttl_seconds: float | None = None,
        failure_ttl_seconds: float = 3600.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self._catalog = catalog
        self._cache = cache
        self._engine = engine
        self._clock = clock
        self._derived = derived
        self._blobs = blobs
        self._retry_after = max(1, retry_after)
        self._lock_seconds = lock_seconds
        self._profile_ttl = profile_ttl_seconds
        self._failure_ttl = failure_ttl_seconds
        self._poll_seconds = poll_seconds
        self._tasks: dict[tuple[str, int | None], asyncio.Task[None]] = {}
        self._profiling: dict[str, asyncio.Future[TableProfile | str | None]] = {}

    # --- reading ---------------------------------------------------------------------------

    async def metadata(
        self, principal: Principal, dataset_id: str, *, version: int | None = None
    ) -> TableProfile:
        """The profile of a dataset's file (the current version unless ``version`` is given).

        Raises ``NotFound`` for a dataset the principal may not see (as for a missing one)
        or a version that does not exist, ``AnalysisPending`` (with ``retry_after``) while
        the analysis runs (and starts one if none is on its way), and ``AnalysisFailed``
        with the recorded reason when it failed.
        """
        require_scope(principal, Scope.READ)
        dataset, number = await self._visible(principal, dataset_id, version)
        file = (await self._version(dataset, number)).file
        profile = await self._cached_profile(file)
        current = number == dataset.version and file.sha256 == dataset.file.sha256
        if profile is not None:
            if current and dataset.status is not DatasetStatus.READY:
                # The outcome was lost (a concurrent edit wrote the dataset back): repair it.
                await self._record(dataset.id, number, file, profile=profile)
            return profile
        if current and dataset.status is DatasetStatus.FAILED:
            raise AnalysisFailed(dataset.analysis_error or "the reason was not recorded")
        failure = await self._cache_get(self._failure_key(file))
        if failure is not None:
            raise AnalysisFailed(failure.decode("utf-8", "replace"))
        self.schedule(dataset.id, number)
        raise AnalysisPending(retry_after=self._wait_for(file))

    async def preview(
        self,
        principal: Principal,
        dataset_id: str,
        *,
        offset: int = 0,
        limit: int = 50,
        columns: Sequence[str] | None = None,
        version: int | None = None,
    ) -> Page:
        """Rows ``[offset, offset + limit)`` of a dataset with their column types.

        Works before the analysis has finished (the page is read from the file itself);
        once a Parquet derivative exists, pages come from it by row group, fast at any
        depth. Raises ``BadRequest`` for a limit outside 1..1000, a negative offset or an
        unknown column, and ``NotFound`` as ``metadata`` does.
        """
        require_scope(principal, Scope.READ)
        if not 1 <= limit <= MAX_PREVIEW_LIMIT:
            raise BadRequest(
                f"limit must be between 1 and {MAX_PREVIEW_LIMIT}.",
                hint=f"Ask for at most {MAX_PREVIEW_LIMIT} rows per page, e.g. limit=50.",
            )
        if offset < 0:
            raise BadRequest("offset must not be negative.", hint="Use offset=0 for the start.")
        dataset, grants = await visible_dataset(
            self._catalog, principal, dataset_id, self._clock.now()
        )
        number = version if version is not None else dataset.version
        file = (await self._version(dataset, number)).file
        if offset + limit > PREVIEW_SAMPLE_ROWS:
            await self._check_deep_preview(principal, dataset, grants, file)
        wanted = list(columns) if columns is not None else None
        if file.format is not FileFormat.PARQUET and self._derived is not None:
            blob = await self._derived.find(file, FileFormat.PARQUET)
            if blob is not None:
                stand_in = DatasetFile(
                    storage_key=blob.key,
                    format=FileFormat.PARQUET,
                    size_bytes=blob.size,
                    sha256=blob.sha256,
                    media_type=FileFormat.PARQUET.media_type,
                    filename=file.filename,
                )
                try:
                    return await self._engine.preview(
                        stand_in, offset=offset, limit=limit, columns=wanted
                    )
                except FileMissing:
                    pass  # removed under us: the original file still answers
        page = await self._engine.preview(file, offset=offset, limit=limit, columns=wanted)
        if page.total_rows is None:
            # Streaming stops at the window; the profile, once there, knows the total.
            profile = await self._cached_profile(file)
            if profile is not None:
                page = attrs.evolve(page, total_rows=profile.row_count)
        return page

    # --- analysis --------------------------------------------------------------------------

    async def analyze(self, dataset_id: str, version: int | None = None) -> None:
        """Profile a dataset version's file unless its content was profiled already.

        Records the outcome on the dataset when the version is still its current one:
        ``ready`` with row and column counts, or ``failed`` with the reason. Never raises
        for a failed analysis (nor for a dataset that has gone); only cancellation
        propagates. Another worker's running analysis of the same content is not repeated.
        """
        try:
            dataset = await self._catalog.get_dataset(dataset_id)
            number = version if version is not None else dataset.version
            file = (await self._version(dataset, number)).file
        except NotFound:
            logger.info("analysis_skipped dataset_id=%s reason=not_found", dataset_id)
            return
        except Exception:
            logger.exception("analysis_failed dataset_id=%s stage=load", dataset_id)
            return
        if dataset.is_deleted:
            return
        try:
            await self._analyze(dataset.id, number, file)
        except Exception:
            # Recording the outcome itself failed (a database outage): the dataset stays
            # as it is and a later metadata request starts the analysis again.
            logger.exception("analysis_failed dataset_id=%s stage=record", dataset_id)

    async def _analyze(self, dataset_id: str, number: int, file: DatasetFile) -> None:
        outcome = await self._profile_once(file)
        if outcome is None:
            return  # interrupted by an outage: stays pending, a later request retries
        if isinstance(outcome, str):
            logger.warning(
                "analysis_failed dataset_id=%s version=%d sha256=%s reason=%s",
                dataset_id,
                number,
                file.sha256,
                outcome,
            )
            await self._record(dataset_id, number, file, failure=outcome)
            return
        await self._build_derivative(file)
        await self._record(dataset_id, number, file, profile=outcome)

    async def _profile_once(self, file: DatasetFile) -> TableProfile | str | None:
        """The content's profile, its failure reason, or None when an outage interrupted it.

        Every analysis of the same content in this process shares one computation.
        """
        cached = await self._cached_profile(file)
        if cached is not None:
            return cached
        key = self._profile_key(file)
        future = self._profiling.get(key)
        if future is None:
            future = asyncio.ensure_future(self._profile_claimed(file))
            self._profiling[key] = future

            def done(f: asyncio.Future[TableProfile | str | None]) -> None:
                if self._profiling.get(key) is f:
                    del self._profiling[key]
                if not f.cancelled():
                    f.exception()

            future.add_done_callback(done)
        return await asyncio.shield(future)

    async def _profile_claimed(self, file: DatasetFile) -> TableProfile | str | None:
        lock = self._lock_key(file)
        failure_key = self._failure_key(file)
        while not await self._claim(lock):
            # Another worker profiles this content: wait for its outcome, or for its claim
            # to end (released, or expired after a crash) and take the work over.
            await asyncio.sleep(self._poll_seconds)
            cached = await self._cached_profile(file)
            if cached is not None:
                return cached
            failure = await self._cache_get(failure_key)
            if failure is not None:
                return failure.decode("utf-8", "replace")
        async with renewed(self._cache, lock, self._lock_seconds):
            cached = await self._cached_profile(file)
            if cached is not None:
                return cached
            await self._cache_delete(failure_key)
            try:
                profile = await self._engine.profile(file)
            except Unavailable as exc:
                # A passing outage is no verdict on the file: leave it pending.
                logger.warning("analysis_interrupted sha256=%s code=%s", file.sha256, exc.code)
                return None
            except Exception as exc:
                if not isinstance(exc, DatadlError):
                    logger.error("analysis_crashed sha256=%s", file.sha256, exc_info=True)
                reason = _reason(exc)
                await self._cache_set(failure_key, reason.encode(), self._failure_ttl)
                return reason
            await self._store_profile(file, profile)
            return profile

    async def _build_derivative(self, file: DatasetFile) -> None:
        if self._derived is None or file.format is FileFormat.PARQUET:
            return
        try:
            await self._derived.derive(file, FileFormat.PARQUET, ConvertOptions())
        except Exception:
            # Previews then stream the original: slower at depth, still correct.
            logger.warning("preview_derivative_failed sha256=%s", file.sha256, exc_info=True)

    async def _record(
        self,
        dataset_id: str,
        number: int,
        file: DatasetFile,
        *,
        profile: TableProfile | None = None,
        failure: str | None = None,
    ) -> None:
        try:
            dataset = await self._catalog.get_dataset(dataset_id)
        except NotFound:
            return

        def change(current: Dataset) -> Dataset | None:
            stale = current.version != number or current.file.sha256 != file.sha256
            if stale or current.is_deleted:
                return None  # a newer version has its own analysis
            if profile is not None:
                return attrs.evolve(
                    current,
                    status=DatasetStatus.READY,
                    row_count=profile.row_count,
                    column_count=len(profile.columns),
                    analysis_error=None,
                )
            return attrs.evolve(current, status=DatasetStatus.FAILED, analysis_error=failure)

        # Compare-and-set: a file replaced or a PATCH made meanwhile is never undone.
        await change_dataset(self._catalog, dataset, change)

    # --- background analyses -----------------------------------------------------------------

    def schedule(self, dataset_id: str, version: int | None = None) -> asyncio.Task[None]:
        """Start ``analyze`` in the background (once per dataset version at a time).

        Must be called from a running event loop; the task is tracked until it ends, so
        ``drain`` can wait for it and ``aclose`` can cancel it.
        """
        key = (dataset_id, version)
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return task
        task = asyncio.get_running_loop().create_task(
            self.analyze(dataset_id, version), name=f"datadl-analyze-{dataset_id}"
        )
        self._tasks[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is finished:
                del self._tasks[key]

        task.add_done_callback(done)
        return task

    @property
    def pending(self) -> int:
        """How many background analyses are running."""
        return sum(1 for task in self._tasks.values() if not task.done())

    async def drain(self) -> None:
        """Wait until every background analysis (including ones started meanwhile) ends."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the background analyses and running conversions, and wait for them."""
        running: list[asyncio.Future[Any]] = [*self._tasks.values(), *self._profiling.values()]
        for future in running:
            future.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks.clear()
        self._profiling.clear()
        if self._derived is not None:
            await self._derived.aclose()

    # --- helpers -------------------------------------------------------------------------------

    async def _check_deep_preview(
        self, principal: Principal, dataset: Dataset, grants: Sequence[Grant], file: DatasetFile
    ) -> None:
        """Rows past the sample need what a download of the dataset needs, quotas aside.

        Paging through a whole table is reading it: a view-only grant, an anonymous
        visitor where the policy forbids anonymous downloads, a policy that requires
        download tokens or the acceptance of terms (both come with a token), and a file
        over the policy's size cap all stop at the first ``PREVIEW_SAMPLE_ROWS`` rows.
        """
        if can_administer(principal, dataset):
            return
        hint = (
            f"The first {PREVIEW_SAMPLE_ROWS} rows are open to everyone who may see the "
            "dataset; ask the owner for download access to page further."
        )
        if not can_download(principal, dataset, grants, self._clock.now()):
            raise Forbidden("Previewing past the sample needs download access.", hint=hint)
        policy = await policy_for(self._catalog, dataset)
        if principal.is_anonymous and not policy.allow_anonymous:
            raise Forbidden(
                "Anonymous previews stop at the sample on this dataset.",
                hint=f"Sign in with an API key to see more than {PREVIEW_SAMPLE_ROWS} rows.",
            )
        if policy.max_download_bytes is not None and file.size_bytes > policy.max_download_bytes:
            raise Forbidden(
                "This file is larger than the policy lets anyone download, so previews stop "
                "at the sample.",
                hint="Ask an organisation admin to raise the download size limit.",
            )
        if policy.terms is not None:
            raise Forbidden(
                "This dataset's policy has terms to accept, so previews stop at the sample.",
                hint="Accept the terms with a download token to get the data.",
            )
        if policy.require_token:
            raise Forbidden(
                "This dataset's policy requires a download token, so previews stop at the sample.",
                hint="Download the dataset with a download token instead.",
            )

    async def _visible(
        self, principal: Principal, dataset_id: str, version: int | None
    ) -> tuple[Dataset, int]:
        dataset, _ = await visible_dataset(self._catalog, principal, dataset_id, self._clock.now())
        return dataset, version if version is not None else dataset.version

    async def _version(self, dataset: Dataset, number: int) -> DatasetVersion:
        try:
            found = await self._catalog.get_version(dataset.id, number)
        except NotFound:
            raise NotFound(f"Dataset {dataset.id!r} has no version {number}.") from None
        if found.removed_at is not None:
            raise NotFound(
                f"Version {number} of dataset {dataset.id!r} was removed.",
                hint="Ask for the current version.",
            )
        return found

    def _wait_for(self, file: DatasetFile) -> int:
        return max(self._retry_after, min(60, file.size_bytes // _ANALYSIS_BYTES_PER_SECOND))

    def _profile_key(self, file: DatasetFile) -> str:
        return f"insight:profile:{self._engine.version}:{file.sha256}"

    def _failure_key(self, file: DatasetFile) -> str:
        return f"insight:failed:{self._engine.version}:{file.sha256}"

    def _lock_key(self, file: DatasetFile) -> str:
        return f"insight:lock:{self._engine.version}:{file.sha256}"

    def _stored_profile_key(self, file: DatasetFile) -> str:
        return f"{derived_folder(file.sha256, self._engine.version)}/profile.json"

    async def _store_profile(self, file: DatasetFile, profile: TableProfile) -> None:
        document = json.dumps(profile.to_dict(), separators=(",", ":")).encode()
        await self._cache_set(self._profile_key(file), document, self._profile_ttl)
        if self._blobs is not None:
            try:
                await self._blobs.write(self._stored_profile_key(file), _once(document))
            except Unavailable:
                logger.warning("profile_not_stored sha256=%s", file.sha256)

    async def _cached_profile(self, file: DatasetFile) -> TableProfile | None:
        raw = await self._cache_get(self._profile_key(file))
        if raw is None and self._blobs is not None:
            # The durable copy outlives an in-process cache (a restart, an eviction).
            try:
                key = self._stored_profile_key(file)
                raw = b"".join([chunk async for chunk in self._blobs.read(key)])
            except FileMissing:
                raw = None
            except Unavailable:
                logger.warning("profile_store_unavailable sha256=%s", file.sha256)
                raw = None
            if raw is not None:
                await self._cache_set(self._profile_key(file), raw, self._profile_ttl)
        if raw is None:
            return None
        try:
            profile = TableProfile.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            logger.warning("profile_cache_unreadable sha256=%s", file.sha256)
            return None
        if profile.sha256 != file.sha256 or profile.engine_version != self._engine.version:
            return None
        return profile

    async def _claim(self, key: str) -> bool:
        try:
            return await self._cache.add(key, b"1", ttl_seconds=self._lock_seconds)
        except Unavailable:
            return True  # without the shared claim the worst case is analysing twice

    async def _cache_get(self, key: str) -> bytes | None:
        try:
            return await self._cache.get(key)
        except Unavailable:
            logger.warning("cache_unavailable key=%s", key)
            return None

    async def _cache_set(self, key: str, value: bytes, ttl: float | None) -> None:
        try:
            await self._cache.set(key, value, ttl_seconds=ttl)
        except Unavailable:
            logger.warning("cache_unavailable key=%s", key)

    async def _cache_delete(self, key: str) -> None:
        with contextlib.suppress(Unavailable):
            await self._cache.delete(key)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _reason(error: BaseException) -> str:
    """What a failed analysis records: the error's own message, never a stack or a path."""
    if isinstance(error, (BadRequest, UnsupportedFormat)):
        return f"{error.code}: {error.message}"[:2000]
    if isinstance(error, DatadlError):
        return f"{error.code}: {error.title}"
    return "internal: the file could not be analysed."
