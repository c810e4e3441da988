"""One stored file of any supported format as a schema plus typed record batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datadl.adapters.tables import _csv, _json, _xlsx
from datadl.adapters.tables._bridge import Aborted, Input
from datadl.adapters.tables._infer import Finding
from datadl.adapters.tables._plan import (
    Ahead,
    TextPlan,
    arrow_message,
    rechunk,
    unique_names,
    unsupported,
)
from datadl.domain.errors import DatadlError, UnsupportedFormat
from datadl.domain.model import FileFormat

_PARQUET_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError)


def scan_text(
    fmt: FileFormat,
    source: Input,
    *,
    batch_rows: int,
    limit_rows: int | None = None,
    ahead: Ahead | None = None,
) -> TextPlan:
    """The first pass over a file without a declared schema (every format but parquet).

    ``ahead`` gets the rows of csv and tsv during the pass (see ``Ahead``); it is stopped
    at once for the other formats.
    """
    if fmt in (FileFormat.CSV, FileFormat.TSV):
        delimiter = "\t" if fmt is FileFormat.TSV else ","
        return _csv.scan(source.stream, delimiter=delimiter, limit_rows=limit_rows, ahead=ahead)
    if ahead is not None:
        ahead.stop()
    if fmt in (FileFormat.JSON, FileFormat.JSONL):
        return _json.scan(source.stream, array=fmt is FileFormat.JSON, limit_rows=limit_rows)
    if fmt is FileFormat.XLSX:
        return _xlsx.scan(source.local_path, batch_rows=batch_rows, limit_rows=limit_rows)
    raise UnsupportedFormat(f"The table engine cannot read {fmt} files.")


def _normalise_type(t: pa.DataType) -> pa.DataType:
    # Categorical columns are read as their values; half floats widen to what every
    # downstream tool (and the hashing step) understands.
    if pa.types.is_dictionary(t):
        return _normalise_type(t.value_type)
    if pa.types.is_float16(t):
        return pa.float32()
    return t


class Table:
    """A readable table: its schema, its row count when known, and its batches."""

    def __init__(
        self,
        schema: pa.Schema,
        row_count: int | None,
        findings: tuple[Finding, ...] = (),
        *,
        declared_nullability: bool = False,
    ) -> None:
        self.schema = schema
        self.row_count = row_count
        self.findings = findings
        self.declared_nullability = declared_nullability

    def batches(self, columns: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        """Typed record batches of the columns asked for (all by default)."""
        raise NotImplementedError

    def window(
        self, offset: int, limit: int, columns: Sequence[int] | None = None
    ) -> tuple[pa.Table, int | None]:
        """Rows ``[offset, offset + limit)`` and the total row count if it became known."""
        taken: list[pa.RecordBatch] = []
        seen = 0
        wanted = limit
        stream = self.batches(columns)
        exhausted = True
        try:
            for batch in stream:
                end = seen + batch.num_rows
                if end > offset and wanted > 0:
                    piece = batch.slice(max(0, offset - seen), wanted)
                    taken.append(piece)
                    wanted -= piece.num_rows
                seen = end
                if wanted <= 0:
                    exhausted = False
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return self._collect(taken, columns), seen if exhausted else self.row_count

    def _collect(self, batches: list[pa.RecordBatch], columns: Sequence[int] | None) -> pa.Table:
        schema = (
            self.schema if columns is None else pa.schema([self.schema.field(i) for i in columns])
        )
        return pa.Table.from_batches(batches, schema=schema)


class TextTable(Table):
    """A csv, tsv, json, jsonl or xlsx file read through its first-pass plan."""

    def __init__(
        self, fmt: FileFormat, source: Input, plan: TextPlan, *, batch_rows: int, complete: bool
    ) -> None:
        super().__init__(plan.schema, plan.row_count if complete else None, plan.findings)
        self._fmt = fmt
        self._source = source
        self._plan = plan
        self._batch_rows = batch_rows

    def batches(self, columns: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        plan, rows = self._plan, self._batch_rows
        if self._fmt in (FileFormat.CSV, FileFormat.TSV):
            return _csv.batches(self._source.stream, plan, batch_rows=rows, columns=columns)
        if self._fmt in (FileFormat.JSON, FileFormat.JSONL):
            array = self._fmt is FileFormat.JSON
            return _json.batches(
                self._source.stream, plan, array=array, batch_rows=rows, columns=columns
            )
        return _xlsx.batches(self._source.local_path, plan, batch_rows=rows, columns=columns)


class ParquetTable(Table):
    """A parquet file, read by row group through ranged reads of the stored object."""

    def __init__(self, source: Input, *, batch_rows: int) -> None:
        try:
            self._file = pq.ParquetFile(
                pa.PythonFile(source.random_access(), mode="r"), pre_buffer=True
            )
            arrow_schema = self._file.schema_arrow
        except (Aborted, DatadlError):
            raise
        except _PARQUET_ERRORS as exc:
            raise unsupported(
                f"The parquet file cannot be read: {arrow_message(exc)}",
                hint="The file looks damaged or cut off (its footer is missing or unreadable); "
                "upload it again.",
            ) from exc
        names = unique_names(arrow_schema.names)
        fields = [
            pa.field(name, _normalise_type(f.type), nullable=f.nullable)
            for name, f in zip(names, arrow_schema, strict=True)
        ]
        super().__init__(pa.schema(fields), self._file.metadata.num_rows, declared_nullability=True)
        self._source_names = arrow_schema.names
        self._batch_rows = batch_rows

    def _normalise(self, batch: pa.RecordBatch, columns: Sequence[int]) -> pa.RecordBatch:
        arrays = []
        for array, index in zip(batch.columns, columns, strict=True):
            target = self.schema.field(index).type
            arrays.append(array if array.type == target else pc.cast(array, target))
        schema = pa.schema([self.schema.field(i) for i in columns])
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def _names(self, wanted: Sequence[int]) -> list[str] | None:
        # Reading by name needs unambiguous names; otherwise read all and select.
        if len(set(self._source_names)) != len(self._source_names):
            return None
        return [self._source_names[i] for i in wanted]

    def _select(self, table: pa.Table, wanted: Sequence[int], names: list[str] | None) -> pa.Table:
        return table if names is not None else table.select(list(wanted))

    def batches(self, columns: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        wanted = list(range(len(self.schema))) if columns is None else list(columns)
        names = self._names(wanted)
        try:
            # One row group at a time: iter_batches reads ahead without bound (measured
            # with pyarrow 26: its memory grows with the file).
            for group in range(self._file.num_row_groups):
                table = self._file.read_row_groups([group], columns=names, use_threads=True)
                table = self._select(table, wanted, names)
                for batch in rechunk(table.to_batches(), self._batch_rows):
                    yield self._normalise(batch, wanted)
        except (Aborted, DatadlError):
            raise
        except _PARQUET_ERRORS as exc:
            raise unsupported(
                f"The parquet file cannot be read: {arrow_message(exc)}",
                hint="The file looks damaged; upload it again.",
            ) from exc

    def window(
        self, offset: int, limit: int, columns: Sequence[int] | None = None
    ) -> tuple[pa.Table, int | None]:
        wanted = list(range(len(self.schema))) if columns is None else list(columns)
        names = self._names(wanted)
        metadata = self._file.metadata
        pieces: list[pa.RecordBatch] = []
        start = 0
        try:
            for group in range(metadata.num_row_groups):
                size = metadata.row_group(group).num_rows
                # Row groups wholly before or after the window are skipped by their metadata.
                if limit and start + size > offset and start < offset + limit:
                    local_start = max(0, offset - start)
                    local_end = min(size, offset + limit - start)
                    pieces.extend(self._group_rows(group, local_start, local_end, names, wanted))
                start += size
        except (Aborted, DatadlError):
            raise
        except _PARQUET_ERRORS as exc:
            raise unsupported(f"The parquet file cannot be read: {arrow_message(exc)}") from exc
        return self._collect(pieces, wanted), self.row_count

    def _group_rows(
        self, group: int, begin: int, end: int, names: list[str] | None, wanted: list[int]
    ) -> list[pa.RecordBatch]:
        # Decoding stops after the rows needed: a first page costs a few pages of each
        # column, not the whole row group.
        reader = self._file.iter_batches(
            batch_size=end, row_groups=[group], columns=names, use_threads=False
        )
        try:
            batch = next(reader)
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        if names is None:
            batch = batch.select(wanted)
        return [self._normalise(batch.slice(begin, end - begin), wanted)]


def open_table(
    fmt: FileFormat,
    source: Input,
    *,
    batch_rows: int,
    plan: TextPlan | None = None,
) -> Table:
    """The file as a Table; text formats need their first-pass plan."""
    if fmt is FileFormat.PARQUET:
        return ParquetTable(source, batch_rows=batch_rows)
    if plan is None:
        plan = scan_text(fmt, source, batch_rows=batch_rows)
    return TextTable(fmt, source, plan, batch_rows=batch_rows, complete=plan.complete)
