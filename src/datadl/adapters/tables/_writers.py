"""Writing record batches as csv, tsv, json, jsonl, parquet or xlsx, chunk by chunk.

Text output never loops over rows in Python: csv and tsv go through pyarrow's csv writer;
json and jsonl are assembled column-wise (DuckDB's ``to_json`` escapes text and nested
values, pyarrow formats numbers) and joined row-wise with pyarrow string kernels. Only
xlsx, whose writer takes one cell per call, loops over cells.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xlsxwriter

from datadl.adapters.tables._render import logical_type, timestamps_as_text

Emit = Callable[[bytes], None]

#: Rows in one xlsx sheet besides its header row.
XLSX_MAX_ROWS = 1_048_575
XLSX_MAX_COLUMNS = 16_384
_XLSX_MAX_TEXT = 32_767
_EXACT_DOUBLE_INT = 2**53
_FORMULA_START = r"^[=+\-@\t\r]"
_JSON_ESCAPED = r'["\\\x00-\x1f]'
_FILE_CHUNK = 1 << 20
_WORKERS = max(1, min(os.cpu_count() or 1, 8))


class _Collector(io.RawIOBase):
    """A write-only file that hands what was written to ``emit`` when flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


def _text_of_floats(values: pa.Array) -> pa.Array:
    # pyarrow prints the shortest text that reads back to the same double, but prints 2.0
    # as "2", which would read back as an integer.
    text = pc.cast(values, pa.string())
    if not pc.any(pc.equal(pc.floor(values), values)).as_py():
        return text
    whole = pc.match_substring_regex(text, r"^-?[0-9]+$")
    return pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)


def _all_whole(values: pa.Array) -> bool:
    # Written natively, a batch of whole floats would print as integers ("2"); one value
    # with a fraction is enough for a reader to see a float column.
    finite = values.filter(pc.is_finite(values))
    return len(finite) > 0 and bool(pc.all(pc.equal(pc.floor(finite), finite)).as_py())


def _duck_text(arrays: list[pa.Array], expressions: list[str]) -> list[pa.Array]:
    """Evaluate one DuckDB expression per column (``{c}`` names it); text results."""
    names = [f"c{i}" for i in range(len(arrays))]
    table = pa.Table.from_arrays(arrays, names=names)
    select = ", ".join(e.format(c=n) + f" AS {n}" for e, n in zip(expressions, names, strict=True))
    with duckdb.connect() as db:
        db.register("batch", table)
        result = db.sql(f"SELECT {select} FROM batch").to_arrow_table()  # noqa: S608
    return [pc.cast(result.column(i).combine_chunks(), pa.string()) for i in range(len(arrays))]


def _needs_json_text(t: pa.DataType) -> bool:
    return logical_type(t) in ("list", "struct", "map", "other")


def _is_binary(t: pa.DataType) -> bool:
    return logical_type(t) == "binary"


def _csv_ready(batch: pa.RecordBatch, neutralise: bool) -> pa.RecordBatch:
    arrays: list[pa.Array] = list(batch.columns)
    duck = [i for i, a in enumerate(arrays) if _needs_json_text(a.type) or _is_binary(a.type)]
    if duck:
        exprs = ["to_base64({c})" if _is_binary(arrays[i].type) else "to_json({c})" for i in duck]
        for i, text in zip(duck, _duck_text([arrays[i] for i in duck], exprs), strict=True):
            arrays[i] = text
    for i, array in enumerate(arrays):
        t = array.type
        # Only text of the data itself is neutralised: numbers written as text ("-3.0")
        # and JSON or base64 renderings are no formulas and must stay exact.
        text_in_data = logical_type(batch.column(i).type) == "string"
        if pa.types.is_timestamp(t):
            arrays[i] = timestamps_as_text(array)
        elif pa.types.is_floating(t) and _all_whole(array):
            arrays[i] = _text_of_floats(array)
        elif pa.types.is_duration(t):
            arrays[i] = pc.cast(array, pa.int64())
        if neutralise and text_in_data:
            arrays[i] = neutralise_formulas(arrays[i])
    names = batch.schema.names
    if neutralise:
        names = [neutralise_formulas(pa.array([n]))[0].as_py() for n in names]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def neutralise_formulas(values: pa.Array) -> pa.Array:
    """Text cells that a spreadsheet would run as a formula, prefixed with a quote (OWASP)."""
    risky = pc.match_substring_regex(values, _FORMULA_START)
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


def write_delimited(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    emit: Emit,
    *,
    delimiter: str,
    neutralise: bool,
) -> None:
    """csv or tsv with a header row; nulls are empty fields."""
    sink = _Collector()
    writer: pacsv.CSVWriter | None = None
    options = pacsv.WriteOptions(include_header=True, delimiter=delimiter)
    for batch in batches:
        ready = _csv_ready(batch, neutralise)
        if writer is None:
            writer = pacsv.CSVWriter(sink, ready.schema, write_options=options)
        writer.write_batch(ready)
        emit(sink.drain())
    if writer is None:
        # No rows: still a header naming the columns.
        names = [f.name for f in schema]
        if neutralise:
            names = [neutralise_formulas(pa.array([n]))[0].as_py() for n in names]
        if names:
            empty = pa.table({n: pa.array([], pa.string()) for n in names})
            pacsv.write_csv(empty, sink, write_options=options)
    else:
        writer.close()
    emit(sink.drain())


def _json_value(array: pa.Array) -> pa.Array | None:
    """One column's values as JSON text, or None when DuckDB must write them."""
    t = array.type
    if pa.types.is_floating(t):
        return _text_of_floats(pc.if_else(pc.is_finite(array), array, None))
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return pc.cast(array, pa.string())
    if pa.types.is_duration(t):
        return pc.cast(pc.cast(array, pa.int64()), pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(array), pa.string())
    if pa.types.is_timestamp(t):
        return _quoted(timestamps_as_text(array))
    if pa.types.is_date(t) or pa.types.is_time(t):
        return _quoted(pc.cast(array, pa.string()))
    if logical_type(t) == "string" and not _needs_escape(array):
        return _quoted(array)
    return None


def _json_values(batch: pa.RecordBatch, pool: ThreadPoolExecutor) -> list[pa.Array]:
    """Each column's values as JSON text ("null" for nulls), formatted in parallel."""
    arrays: list[pa.Array] = list(batch.columns)
    out: list[pa.Array | None] = list(pool.map(_json_value, arrays))
    duck = [i for i, text in enumerate(out) if text is None]
    if duck:
        expressions = [
            "to_json(to_base64({c}))" if _is_binary(arrays[i].type) else "to_json({c})"
            for i in duck
        ]
        for i, text in zip(duck, _duck_text([arrays[i] for i in duck], expressions), strict=True):
            out[i] = text
    return [pc.fill_null(a, "null") for a in out if a is not None]


def _quoted(text: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', text, '"', "")


def _needs_escape(text: pa.Array) -> bool:
    # Most text needs no json escaping; quoting it directly skips a trip through DuckDB.
    return bool(pc.any(pc.match_substring_regex(text, _JSON_ESCAPED)).as_py())


def _json_rows(batch: pa.RecordBatch, pool: ThreadPoolExecutor) -> pa.Array:
    if batch.num_columns == 0:
        return pa.array(["{}"] * batch.num_rows, pa.string())
    parts: list[Any] = []
    for index, (name, values) in enumerate(
        zip(batch.schema.names, _json_values(batch, pool), strict=True)
    ):
        key = json.dumps(name, ensure_ascii=False) + ":"
        parts.append(("{" if index == 0 else ",") + key)
        parts.append(values)
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def _joined(rows: pa.Array, separator: str) -> bytes:
    # Each row followed by the separator, read straight out of the string buffer.
    text = pc.binary_join_element_wise(rows, separator, "")
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    offsets, data = text.buffers()[1], text.buffers()[2]
    if data is None or len(text) == 0:
        return b""
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    starts = np.frombuffer(offsets, dtype=width)
    begin, end = int(starts[text.offset]), int(starts[text.offset + len(text)])
    return data.slice(begin, end - begin).to_pybytes()  # type: ignore[no-any-return]


def write_json(batches: Iterable[pa.RecordBatch], emit: Emit, *, lines: bool) -> None:
    """json lines, or one json array of objects (one object per line inside it)."""
    first = True
    if not lines:
        emit(b"[")
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="datadl-json") as pool:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            rows = _json_rows(batch, pool)
            text = _joined(rows, "\n") if lines else _array_part(rows, first)
            emit(text)
            first = False
    if not lines:
        emit(b"]\n" if first else b"\n]\n")


def _array_part(rows: pa.Array, first: bool) -> bytes:
    head = b"\n" if first else b",\n"
    last = len(rows) - 1
    return head + _joined(rows.slice(0, last), ",\n") + _joined(rows.slice(last), "")


#: A column is dictionary-encoded when its first batch has at most this share of distinct
#: values. Measured on the benchmark's 2 M rows: dictionary-encoding every column made
#: writing parquet twice as slow, and the file bigger (62 MiB against 49 MiB), because the
#: writer builds a dictionary for each high-cardinality column only to abandon it.
_DICTIONARY_SHARE = 0.5


def dictionary_columns(batch: pa.RecordBatch) -> bool | list[str]:
    """The columns worth a parquet dictionary, judged on one batch (True: all of them)."""
    if any(pa.types.is_nested(f.type) for f in batch.schema):
        return True
    chosen: list[str] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        present = len(column) - column.null_count
        try:
            distinct = pc.count_distinct(column).as_py() if present else 0
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            distinct = 0
        if distinct <= _DICTIONARY_SHARE * present:
            chosen.append(field.name)
    return chosen


def write_parquet(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, emit: Emit, *, row_group_rows: int
) -> None:
    """parquet, in row groups of ``row_group_rows`` rows, each emitted once written.

    Columns are dictionary-encoded when their first batch has few distinct values.
    """
    sink = _Collector()
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    held = 0

    def open_writer(first: pa.RecordBatch | None) -> pq.ParquetWriter:
        dictionary = True if first is None else dictionary_columns(first)
        return pq.ParquetWriter(
            pa.PythonFile(sink, mode="w"),
            schema,
            compression="zstd",
            use_dictionary=dictionary,
        )

    def flush() -> None:
        nonlocal pending, held
        if pending:
            assert writer is not None
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=held)
            pending, held = [], 0
            emit(sink.drain())

    for batch in batches:
        if writer is None:
            writer = open_writer(batch)
        while batch.num_rows:
            take = min(batch.num_rows, row_group_rows - held)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held >= row_group_rows:
                flush()
    if writer is None:
        writer = open_writer(None)
    flush()
    writer.close()
    emit(sink.drain())


def _xlsx_column(array: pa.Array, sheet: Any, formats: dict[str, Any]) -> tuple[list[Any], Any]:
    """One column's cell values and the sheet method that writes each (never a formula)."""
    kind = logical_type(array.type)
    if kind == "string":
        return array.to_pylist(), sheet.write_string
    if kind == "boolean":
        return array.to_pylist(), sheet.write_boolean
    if kind == "integer":
        found = pc.min_max(array)
        low, high = found["min"].as_py(), found["max"].as_py()
        if low is None or (low >= -_EXACT_DOUBLE_INT and high <= _EXACT_DOUBLE_INT):
            return array.to_pylist(), sheet.write_number

        def integer(row: int, col: int, value: int) -> None:
            # Excel numbers are doubles: larger integers keep their digits as text.
            if -_EXACT_DOUBLE_INT <= value <= _EXACT_DOUBLE_INT:
                sheet.write_number(row, col, value)
            else:
                sheet.write_string(row, col, str(value))

        return array.to_pylist(), integer
    if kind in ("float", "decimal"):
        numbers = pc.cast(array, pa.float64(), safe=False)
        # NaN and infinities have no cell value in a sheet: they are left empty.
        finite = pc.if_else(pc.is_finite(numbers), numbers, None)
        return finite.to_pylist(), sheet.write_number
    if kind in ("date", "timestamp", "time"):
        return _xlsx_moments(array, kind, sheet, formats[kind])
    if _needs_json_text(array.type):
        return _duck_text([array], ["to_json({c})"])[0].to_pylist(), sheet.write_string
    if _is_binary(array.type):
        return _duck_text([array], ["to_base64({c})"])[0].to_pylist(), sheet.write_string
    if pa.types.is_duration(array.type):
        return pc.cast(array, pa.int64()).to_pylist(), sheet.write_number
    return [None if v is None else str(v) for v in array.to_pylist()], sheet.write_string


def _xlsx_moments(array: pa.Array, kind: str, sheet: Any, style: Any) -> tuple[list[Any], Any]:
    t = array.type
    if kind == "date":
        array = pc.cast(array, pa.timestamp("s"))
    elif kind == "timestamp":
        if t.tz is not None:
            array = pc.cast(array, pa.timestamp(t.unit, "UTC")).cast(pa.timestamp(t.unit))
        if t.unit == "ns":
            # Excel keeps milliseconds at best; Python's datetime keeps microseconds.
            array = pc.cast(array, pa.timestamp("us"), safe=False)
    elif t.unit == "ns":
        array = pc.cast(array, pa.time64("us"), safe=False)
    values = array.to_pylist()

    def moment(row: int, col: int, value: Any) -> None:
        if isinstance(value, datetime) and value.year < 1900:
            # Excel's calendar starts in 1900; earlier moments stay ISO text.
            text = value.date().isoformat() if kind == "date" else value.isoformat()
            sheet.write_string(row, col, text)
        else:
            sheet.write_datetime(row, col, value, style)

    return values, moment


def write_xlsx(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, emit: Emit, *, path: str
) -> None:
    """One worksheet with a header row, written in constant memory, then streamed."""
    workbook = xlsxwriter.Workbook(
        path,
        {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    sheet = workbook.add_worksheet()
    formats = {
        "date": workbook.add_format({"num_format": "yyyy-mm-dd"}),
        "timestamp": workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"}),
        "time": workbook.add_format({"num_format": "hh:mm:ss.000"}),
    }
    for col, field in enumerate(schema):
        sheet.write_string(0, col, field.name)
    row = 1
    for batch in batches:
        prepared = [_xlsx_column(array, sheet, formats) for array in batch.columns]
        writers = [write for _, write in prepared]
        # xlsxwriter takes one cell per call; this loop is the format's floor.
        for values in zip(*(cells for cells, _ in prepared), strict=True):
            for col, value in enumerate(values):
                if value is not None:
                    writers[col](row, col, value)
            row += 1
    workbook.close()
    with open(path, "rb") as handle:
        while chunk := handle.read(_FILE_CHUNK):
            emit(chunk)
    os.unlink(path)


def xlsx_too_large(rows: int, columns: int) -> str | None:
    """Why a table does not fit one worksheet, or None when it does."""
    if rows > XLSX_MAX_ROWS:
        return f"The table has {rows:,} rows; an xlsx sheet holds at most {XLSX_MAX_ROWS:,}."
    if columns > XLSX_MAX_COLUMNS:
        return (
            f"The table has {columns:,} columns; an xlsx sheet holds at most {XLSX_MAX_COLUMNS:,}."
        )
    return None
