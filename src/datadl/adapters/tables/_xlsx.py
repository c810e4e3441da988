"""Reading the first sheet of an xlsx workbook (python-calamine) as typed batches.

A workbook is a zip archive, so it is spooled to a local temporary file first; calamine
then holds the sheet's cells in memory while rows are handed out in batches (a sheet has at
most 1,048,576 rows). Cells become text and go through the same inference as csv, so a
column reads the same whichever of the two formats it arrived in.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

import pyarrow as pa
import python_calamine

from datadl.adapters.tables._infer import NULL_SPELLINGS, ColumnGuess
from datadl.adapters.tables._plan import TextPlan, arrow_message, unique_names, unsupported

_NULLS = frozenset(NULL_SPELLINGS)
_BIGGEST_EXACT_FLOAT_INT = 2**63


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Excel stores every number as a double; whole ones are integers to a reader.
        if value.is_integer() and abs(value) < _BIGGEST_EXACT_FLOAT_INT:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    text = str(value)
    return None if text in _NULLS else text


#: The most a workbook may hold once unzipped. calamine keeps the first sheet's cells in
#: memory, so the expanded size, not the upload's, is what a reader pays for; a full sheet
#: of 1,048,576 rows of a few columns stays well under it, a zip bomb does not.
MAX_UNZIPPED_BYTES = 512 * 1024 * 1024


def _check_unzipped_size(path: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            unzipped = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise unsupported(
            "The file is not an xlsx workbook (not a zip archive).",
            hint="Upload an .xlsx workbook saved by a spreadsheet program.",
        ) from exc
    if unzipped > MAX_UNZIPPED_BYTES:
        raise unsupported(
            f"The workbook expands to {unzipped:,} bytes, more than the "
            f"{MAX_UNZIPPED_BYTES:,} an xlsx may hold here.",
            hint="Export the sheet as csv or parquet and upload that instead.",
        )


def _open_sheet(path: str) -> Any:
    _check_unzipped_size(path)
    try:
        workbook = python_calamine.load_workbook(path)
        if not workbook.sheet_names:
            raise unsupported("The workbook has no sheet.")
        sheet = workbook.get_sheet_by_index(0)
    except python_calamine.CalamineError as exc:
        raise unsupported(
            f"The file does not open as an xlsx workbook: {arrow_message(exc)}",
            hint="Upload an .xlsx workbook saved by a spreadsheet program.",
        ) from exc
    except (ValueError, OSError) as exc:
        raise unsupported("The file does not open as an xlsx workbook.") from exc
    merged = getattr(sheet, "merged_cell_ranges", None) or []
    if any(start[0] == 0 for start, _end in merged):
        raise unsupported(
            "The first sheet's header row has merged cells.",
            hint="Unmerge the header cells so that every column has its own name, then "
            "upload again.",
        )
    return sheet


def _rows(path: str) -> tuple[list[str | None], Iterator[list[Any]]]:
    sheet = _open_sheet(path)
    rows = iter(sheet.iter_rows())
    try:
        header = next(rows)
    except StopIteration:
        return [], iter(())
    return [_text(v) for v in header], rows


def _string_batches(
    rows: Iterator[list[Any]], width: int, batch_rows: int
) -> Iterator[list[pa.Array]]:
    buffer: list[list[Any]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= batch_rows:
            yield _columns(buffer, width)
            buffer = []
    if buffer:
        yield _columns(buffer, width)


def _columns(rows: list[list[Any]], width: int) -> list[pa.Array]:
    return [
        pa.array([_text(row[i]) if i < len(row) else None for row in rows], pa.string())
        for i in range(width)
    ]


def scan(
    local_path: Callable[[], str], *, batch_rows: int, limit_rows: int | None = None
) -> TextPlan:
    """First pass over the first sheet: header, column types and row count.

    With ``limit_rows`` the pass stops after about that many rows (a partial plan).
    """
    header, rows = _rows(local_path())
    if not header:
        return TextPlan(columns=(), row_count=0)
    names = unique_names(header)
    guesses = [ColumnGuess(name) for name in names]
    count = 0
    complete = True
    for arrays in _string_batches(rows, len(names), batch_rows):
        count += len(arrays[0])
        for guess, array in zip(guesses, arrays, strict=True):
            guess.observe(array)
        if limit_rows is not None and count >= limit_rows:
            complete = False
            break
    plans = tuple(g.plan() for g in guesses)
    return TextPlan(columns=plans, row_count=count, complete=complete)


def batches(
    local_path: Callable[[], str],
    plan: TextPlan,
    *,
    batch_rows: int,
    columns: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Second pass: typed record batches of the columns asked for (all by default)."""
    if not plan.columns:
        return
    wanted, schema = plan.selection(columns)
    _header, rows = _rows(local_path())
    for arrays in _string_batches(rows, len(plan.columns), batch_rows):
        typed = [plan.columns[i].convert(arrays[i]) for i in wanted]
        yield pa.RecordBatch.from_arrays(typed, schema=schema)
