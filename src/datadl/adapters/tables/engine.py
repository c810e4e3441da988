"""ArrowTableEngine: the TableEngine port on pyarrow, reading stored files in bounded memory.

Reading. Parsing runs in a worker thread, one record batch at a time. csv, tsv, json and
jsonl are streamed: the thread reads a blocking file object fed from the BlobStore's async
stream through a bounded read-ahead queue (a few chunks), so no input is held whole.
Parquet is read through ranged reads of the stored object: the footer, then one row group
at a time (``ParquetFile.iter_batches`` was measured to read ahead without bound). An
xlsx workbook is a zip archive needing random access, so it is spooled to a temporary
local file; calamine then holds the first sheet's cells in memory (at most 1,048,576
rows). A json array is turned into json lines on the fly by a vectorised scanner, then
read by pyarrow's json reader block by block.

Types. Formats without a declared schema (csv, tsv, json, jsonl, xlsx) get a first pass
that infers each column's type over the whole file (not widening on conflict), then a
second pass reads with that schema, so a type is stable across batches: integers with
text further down make a text column and a ``type_mismatch`` issue, not a crash. The
first pass's plan is remembered per content (sha256 and format), so previews and
conversions after a profile skip it; a preview of a file not yet profiled infers from the
rows up to its window only. For csv and tsv a profile or a conversion (but to xlsx) with no
plan yet makes do with the one pass when it can: the rows are typed as inferred so far and
handed to the statistics (or written to a local spool file) during inference, in the very
batches a second pass would give; if any column's type changes on the way, that work is
dropped and the second pass runs as before. Results are the same either way.

csv and tsv: UTF-8 (with or without BOM), else UTF-16 with a
BOM, else cp1252, else Latin-1; comma, or semicolon when the header has no comma;
``""``, ``NA``, ``N/A``, ``null``, ``NaN`` and ``-`` are missing values; "Yes"/"No"
stay text; a first row whose every cell fits its column's (non-text) type is data, not a
header. Dates are read in ISO, ``%Y/%m/%d``, ``%m/%d/%Y``, ``%d/%m/%Y`` and ``%d.%m.%Y``.

Statistics and quality: see ``_stats`` (what is exact and what is estimated, with which
bound) and ``_quality`` (how scores, issues and severities are computed).

Preview. Parquet decodes only the row groups that overlap the window, found from metadata,
and in them only the rows up to the window's end. Other formats stream up to the window;
for fast deep pages the insight service previews the parquet derivative that its analysis
builds (``datadl.services.insight``).

Conversion round trips. Parquet carries every arrow type. What the others cannot carry:

- csv, tsv: no types at all; reading back infers integers, floats (always written with a
  decimal point or exponent), booleans, dates and timestamps again. Lost: integer widths
  (all become 64-bit), float32 (becomes float64), decimals (read back as floats), time zone
  names (instants are kept with their UTC offset), the difference between an empty string
  and a null, text that looks like a number, date or boolean (read back as that type),
  text holding NUL characters (refused as binary on reading), and nested or binary values
  (written as json text and base64 text).
- json, jsonl: no dates, timestamps, decimals or binary; dates and timestamps are ISO 8601
  strings (re-inferred on reading), decimals are exact json numbers (read back as floats),
  binary is base64 text, and NaN or infinite floats become null.
- xlsx: numbers are doubles written with 16 significant digits, so integers beyond 2**53
  are written as text and decimals as doubles; floats that are all whole read back as
  integers; time zones are dropped after converting to UTC; times keep milliseconds;
  dates before 1900 are ISO text; cells hold at most 32,767 characters; an empty string is
  an empty cell, read back as null; trailing rows whose cells are all null are not stored
  by a sheet; nested and binary values are text. A table of more than 1,048,575 rows or
  16,384 columns is refused before the first byte.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import structlog

from datadl.adapters.system import SystemClock
from datadl.adapters.tables import _writers
from datadl.adapters.tables._bridge import IoContext, StoredInput, run_job, stream_job
from datadl.adapters.tables._plan import Ahead, TextPlan, prefetch
from datadl.adapters.tables._quality import report
from datadl.adapters.tables._render import logical_type, render_array
from datadl.adapters.tables._sources import Table, open_table, scan_text
from datadl.adapters.tables._stats import TableStats
from datadl.domain.errors import BadRequest, TooManyRows
from datadl.domain.model import DatasetFile, FileFormat
from datadl.domain.tables import Column, Page, TableProfile
from datadl.ports.clock import Clock
from datadl.ports.storage import BlobStore
from datadl.ports.tables import ConvertOptions

_SPOOL_CHUNK = 1 << 20
_FED = 2
_DONE = object()
_VOID = object()


class _Voided(Exception):
    """The rows being written became void: the writer stops."""


class _WriteAhead(Ahead):
    """A conversion written during a first pass, by a writer thread, to a local spool file.

    ``write(batches, schema, emit)`` is the conversion; it runs in its own thread over the
    batches fed (at most ``_FED`` waiting), and its output goes to ``path``.
    """

    def __init__(
        self,
        batch_rows: int,
        write: Callable[[Iterable[pa.RecordBatch], pa.Schema, _writers.Emit], None],
        path: str,
    ) -> None:
        super().__init__(batch_rows)
        self._write = write
        self._path = path
        self._queue: queue.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def start(self, schema: pa.Schema) -> None:
        self._end(_VOID)
        self._failed = None
        waiting: queue.Queue[object] = queue.Queue(maxsize=_FED)
        ended = threading.Event()

        def batches() -> Iterator[pa.RecordBatch]:
            while True:
                item = waiting.get()
                if item is _DONE or item is _VOID:
                    ended.set()
                    if item is _VOID:
                        raise _Voided
                    return
                assert isinstance(item, pa.RecordBatch)
                yield item

        def run() -> None:
            try:
                with open(self._path, "wb") as out:

                    def emit(chunk: bytes) -> None:
                        out.write(chunk)

                    self._write(batches(), schema, emit)
            except BaseException as exc:  # reported through result()
                self._failed = exc
            # Whatever is still fed is taken off, so that the feeder never blocks.
            while not ended.is_set():
                item = waiting.get()
                if item is _DONE or item is _VOID:
                    ended.set()

        self._queue = waiting
        self._thread = threading.Thread(target=run, name="datadl-write-ahead", daemon=True)
        self._thread.start()

    def feed(self, batch: pa.RecordBatch) -> None:
        assert self._queue is not None
        self._queue.put(batch)

    def stop(self) -> None:
        super().stop()
        self._end(_VOID)

    def _end(self, item: object) -> None:
        if self._thread is None or self._queue is None:
            return
        self._queue.put(item)
        self._thread.join()
        self._thread = self._queue = None

    def result(self) -> bool:
        """Whether the whole conversion is in the spool file (types held, writing worked)."""
        if not self.held:
            return False
        self._end(_DONE)
        if self._failed is not None:
            # The second pass will meet the same failure and report it properly.
            logger.debug("write_ahead_failed", error=repr(self._failed))
            return False
        return True

    def close(self) -> None:
        self._end(_VOID)


#: Changes whenever profiles or conversions would come out differently.
ENGINE_VERSION = "arrow-1"
MAX_PREVIEW_ROWS = 1000

logger = structlog.get_logger()


class _StatsAhead(Ahead):
    """Statistics taken during a first pass, in a worker thread one batch behind the reader."""

    def __init__(self, batch_rows: int, *, exact_distinct: int, exact_rows: int) -> None:
        super().__init__(batch_rows)
        self._exact_distinct = exact_distinct
        self._exact_rows = exact_rows
        self._stats: TableStats | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="datadl-ahead")
        self._pending: Future[None] | None = None

    def start(self, schema: pa.Schema) -> None:
        self._drop()
        self._stats = TableStats(
            schema, exact_distinct=self._exact_distinct, exact_rows=self._exact_rows
        )

    def feed(self, batch: pa.RecordBatch) -> None:
        assert self._stats is not None
        self._wait()
        self._pending = self._worker.submit(self._stats.observe, batch)

    def stop(self) -> None:
        super().stop()
        self._drop()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _drop(self) -> None:
        try:
            self._wait()
        except Exception:  # the work is void anyway
            logger.debug("speculative_statistics_failed", exc_info=True)
        if self._stats is not None:
            self._stats.close()
            self._stats = None

    def result(self) -> TableStats | None:
        """The statistics of every row, if the pass's types held to the end (else None)."""
        if not self.held or self._stats is None:
            return None
        self._wait()
        stats, self._stats = self._stats, None
        return stats

    def close(self) -> None:
        self._drop()
        self._worker.shutdown(wait=True)


class ArrowTableEngine:
    """The TableEngine port on pyarrow: profile, preview and convert in bounded memory.

    ``batch_rows`` bounds every record batch; ``exact_distinct`` is how many distinct values
    a column may have before its distinct count, top values, quantiles and histogram become
    estimates; ``exact_rows`` is how many row hashes stay in memory before duplicate
    detection spills to temporary files; ``row_group_rows`` sizes the row groups of parquet
    output; ``plan_cache_size`` is how many first-pass plans are remembered.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        batch_rows: int = 65_536,
        exact_distinct: int = 100_000,
        exact_rows: int = 1_000_000,
        row_group_rows: int = 131_072,
        plan_cache_size: int = 256,
        clock: Clock | None = None,
    ) -> None:
        if batch_rows < 1 or exact_distinct < 1 or exact_rows < 1 or row_group_rows < 1:
            raise ValueError(
                "batch_rows, exact_distinct, exact_rows and row_group_rows must be >= 1"
            )
        self._blobs = blobs
        self._batch_rows = batch_rows
        self._exact_distinct = exact_distinct
        self._exact_rows = exact_rows
        self._row_group_rows = row_group_rows
        self._clock: Clock = clock or SystemClock()
        self._plans: collections.OrderedDict[tuple[str, FileFormat], TextPlan] = (
            collections.OrderedDict()
        )
        self._plan_cache_size = plan_cache_size
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return ENGINE_VERSION

    # --- plans ------------------------------------------------------------------------

    def _cached_plan(self, file: DatasetFile) -> TextPlan | None:
        with self._lock:
            plan = self._plans.get((file.sha256, file.format))
            if plan is not None:
                self._plans.move_to_end((file.sha256, file.format))
            return plan

    def _remember(self, file: DatasetFile, plan: TextPlan) -> None:
        if not plan.complete:
            return
        with self._lock:
            self._plans[(file.sha256, file.format)] = plan
            self._plans.move_to_end((file.sha256, file.format))
            while len(self._plans) > self._plan_cache_size:
                self._plans.popitem(last=False)

    def _open(
        self, file: DatasetFile, source: StoredInput, *, prefix_rows: int | None = None
    ) -> Table:
        if file.format is FileFormat.PARQUET:
            return open_table(file.format, source, batch_rows=self._batch_rows)
        plan = self._cached_plan(file)
        if plan is None:
            plan = scan_text(
                file.format, source, batch_rows=self._batch_rows, limit_rows=prefix_rows
            )
            self._remember(file, plan)
        return open_table(file.format, source, batch_rows=self._batch_rows, plan=plan)

    async def _input_size(self, file: DatasetFile) -> int:
        # Asking storage first turns a missing file into FileMissing before any parsing.
        return (await self._blobs.stat(file.storage_key)).size

    # --- profile ----------------------------------------------------------------------

    async def profile(self, file: DatasetFile) -> TableProfile:
        size = await self._input_size(file)
        started = time.perf_counter()
        profile = await run_job(self._blobs, lambda ctx: self._profile(ctx, file, size))
        logger.info(
            "table_profiled",
            sha256=file.sha256,
            format=str(file.format),
            rows=profile.row_count,
            columns=len(profile.columns),
            seconds=round(time.perf_counter() - started, 3),
        )
        return profile

    def _profile(self, ctx: IoContext, file: DatasetFile, size: int) -> TableProfile:
        source = StoredInput(ctx, file.storage_key, size)
        stats: TableStats | None = None
        if file.format in (FileFormat.CSV, FileFormat.TSV) and self._cached_plan(file) is None:
            # One pass instead of two: statistics are taken during type inference, and
            # kept only if no column's type changed on the way (else a second pass).
            ahead = _StatsAhead(
                self._batch_rows, exact_distinct=self._exact_distinct, exact_rows=self._exact_rows
            )
            try:
                plan = scan_text(file.format, source, batch_rows=self._batch_rows, ahead=ahead)
                stats = ahead.result()
            finally:
                ahead.close()
            self._remember(file, plan)
            table = open_table(file.format, source, batch_rows=self._batch_rows, plan=plan)
        else:
            table = self._open(file, source)
        try:
            if stats is None:
                stats = TableStats(
                    table.schema, exact_distinct=self._exact_distinct, exact_rows=self._exact_rows
                )
                for batch in prefetch(table.batches()):
                    ctx.check()
                    stats.observe(batch)
            statistics, duplicates = stats.finish()
            quality = report(
                rows=stats.rows,
                columns=stats.columns,
                statistics=statistics,
                findings=table.findings,
                duplicate_rows=duplicates,
            )
        finally:
            if stats is not None:
                stats.close()
        columns = tuple(
            Column(
                name=field.name,
                type=logical_type(field.type),
                nullable=field.nullable
                if table.declared_nullability
                else statistics[field.name]["nulls"] > 0,
                physical_type=str(field.type),
            )
            for field in table.schema
        )
        return TableProfile(
            sha256=file.sha256,
            engine_version=ENGINE_VERSION,
            columns=columns,
            row_count=stats.rows,
            statistics=statistics,
            quality=quality,
            analyzed_at=self._clock.now(),
        )

    # --- preview ----------------------------------------------------------------------

    async def preview(
        self, file: DatasetFile, *, offset: int, limit: int, columns: Sequence[str] | None = None
    ) -> Page:
        if offset < 0:
            raise BadRequest("offset must not be negative.", hint="Use offset=0 for the start.")
        if limit < 0 or limit > MAX_PREVIEW_ROWS:
            raise BadRequest(
                f"limit must be between 0 and {MAX_PREVIEW_ROWS}.",
                hint=f"Ask for at most {MAX_PREVIEW_ROWS} rows per page.",
            )
        size = await self._input_size(file)
        wanted = list(columns) if columns is not None else None
        return await run_job(
            self._blobs, lambda ctx: self._preview(ctx, file, size, offset, limit, wanted)
        )

    def _preview(
        self,
        ctx: IoContext,
        file: DatasetFile,
        size: int,
        offset: int,
        limit: int,
        columns: list[str] | None,
    ) -> Page:
        source = StoredInput(ctx, file.storage_key, size)
        table = self._open(file, source, prefix_rows=offset + limit + 1)
        names = table.schema.names
        if columns is None:
            indices = list(range(len(names)))
        else:
            unknown = [c for c in columns if c not in names]
            if unknown:
                raise BadRequest(
                    f"Unknown column(s): {', '.join(repr(c) for c in unknown)}.",
                    hint="Ask only for columns the dataset's schema lists.",
                )
            indices = [names.index(c) for c in columns]
        window, total = table.window(offset, limit, indices)
        rendered = [render_array(column) for column in window.columns]
        rows = tuple(zip(*rendered, strict=True)) if rendered else ()
        if not rendered:
            rows = tuple(() for _ in range(window.num_rows))
        page_columns = tuple(
            Column(
                name=field.name,
                type=logical_type(field.type),
                nullable=field.nullable,
                physical_type=str(field.type),
            )
            for field in window.schema
        )
        return Page(columns=page_columns, rows=rows, offset=offset, limit=limit, total_rows=total)

    # --- convert ----------------------------------------------------------------------

    def convert(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions
    ) -> AsyncIterator[bytes]:
        return self._convert(file, target, options)

    async def _convert(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions
    ) -> AsyncIterator[bytes]:
        size = await self._input_size(file)
        ahead = (
            file.format in (FileFormat.CSV, FileFormat.TSV)
            and target is not FileFormat.XLSX
            and self._cached_plan(file) is None
        )
        if not ahead:
            # Everything that can refuse the request runs before the first byte is sent.
            rows, width = await run_job(self._blobs, lambda ctx: self._shape(ctx, file, size))
            if target is FileFormat.XLSX:
                problem = _writers.xlsx_too_large(rows, width)
                if problem is not None:
                    raise TooManyRows(
                        problem,
                        hint="Download the dataset as csv or parquet instead.",
                        extra={"limit_rows": _writers.XLSX_MAX_ROWS},
                    )
        started = time.perf_counter()
        sent = 0
        async for chunk in stream_job(
            self._blobs,
            lambda ctx, emit: self._write(ctx, file, size, target, options, emit, ahead=ahead),
        ):
            sent += len(chunk)
            yield chunk
        logger.info(
            "table_converted",
            sha256=file.sha256,
            source=str(file.format),
            target=str(target),
            bytes=sent,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _shape(self, ctx: IoContext, file: DatasetFile, size: int) -> tuple[int, int]:
        table = self._open(file, StoredInput(ctx, file.storage_key, size))
        # A full first pass (or parquet metadata) always knows the row count.
        return table.row_count or 0, len(table.schema)

    def _write(
        self,
        ctx: IoContext,
        file: DatasetFile,
        size: int,
        target: FileFormat,
        options: ConvertOptions,
        emit: _writers.Emit,
        *,
        ahead: bool = False,
    ) -> None:
        source = StoredInput(ctx, file.storage_key, size)
        if ahead:
            # One pass instead of two: the output is written to a local spool file during
            # type inference and sent only if no column's type changed on the way.
            spool = ctx.spool_path()
            writer = _WriteAhead(
                self._batch_rows,
                lambda batches, schema, out: self._write_batches(
                    batches, schema, target, options, out, ctx
                ),
                spool,
            )
            try:
                plan = scan_text(file.format, source, batch_rows=self._batch_rows, ahead=writer)
                written = writer.result()
            finally:
                writer.close()
            self._remember(file, plan)
            if written:
                with open(spool, "rb") as handle:
                    while chunk := handle.read(_SPOOL_CHUNK):
                        emit(chunk)
                return
            table = open_table(file.format, source, batch_rows=self._batch_rows, plan=plan)
        else:
            table = self._open(file, source)

        def batches() -> Any:
            for batch in prefetch(table.batches()):
                ctx.check()
                yield batch

        self._write_batches(batches(), table.schema, target, options, emit, ctx)

    def _write_batches(
        self,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        target: FileFormat,
        options: ConvertOptions,
        emit: _writers.Emit,
        ctx: IoContext,
    ) -> None:
        if target in (FileFormat.CSV, FileFormat.TSV):
            _writers.write_delimited(
                batches,
                schema,
                emit,
                delimiter="\t" if target is FileFormat.TSV else ",",
                neutralise=options.neutralize_formulas,
            )
        elif target in (FileFormat.JSON, FileFormat.JSONL):
            _writers.write_json(batches, emit, lines=target is FileFormat.JSONL)
        elif target is FileFormat.PARQUET:
            _writers.write_parquet(batches, schema, emit, row_group_rows=self._row_group_rows)
        else:
            _writers.write_xlsx(batches, schema, emit, path=ctx.spool_path())
