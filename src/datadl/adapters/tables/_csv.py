"""Reading csv and tsv: encoding, delimiter and header detection, then typed batches."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from datadl.adapters.tables._bridge import Aborted
from datadl.adapters.tables._infer import NULL_SPELLINGS, ColumnGuess, ColumnPlan
from datadl.adapters.tables._plan import (
    Ahead,
    Regroup,
    TextPlan,
    arrow_message,
    column_pool,
    rechunk,
    unique_names,
    unsupported,
)
from datadl.domain.errors import DatadlError

#: How much of the file's start is read to find the header and the encoding.
HEAD_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 20
#: A preview's first pass reads in smaller blocks: it stops after a window of rows.
_PREFIX_BLOCK_BYTES = 256 << 10
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
#: Tried in order when the bytes are not UTF-8: Windows' Western code page, then Latin-1,
#: which decodes any byte.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


def _read_head(stream: BinaryIO) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < HEAD_BYTES:
        part = stream.read(HEAD_BYTES - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _encoding_of(head: bytes) -> str:
    if head.startswith(_UTF16_BOMS):
        return "utf-16"
    if b"\x00" in head:
        raise unsupported(
            "The file holds binary data (NUL bytes), not delimited text.",
            hint="Upload csv or tsv text; UTF-16 text needs a byte order mark.",
        )
    return "utf8"


def _first_record(head: bytes, encoding: str, delimiter: str) -> list[str] | None:
    if encoding == "utf8":
        text = head.removeprefix(_UTF8_BOM).decode("utf-8", errors="replace")
    else:
        text = head.decode(encoding, errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise unsupported(f"The header row does not parse: {arrow_message(exc)}.") from exc


def _options(
    width: int,
    encoding: str,
    delimiter: str,
    *,
    skip_header: bool,
    on_invalid: Callable[[Any], str],
    include: Sequence[int] | None = None,
    block_size: int = _BLOCK_BYTES,
) -> dict[str, Any]:
    names = [f"c{i}" for i in range(width)]
    return {
        "read_options": pacsv.ReadOptions(
            column_names=names,
            skip_rows_after_names=1 if skip_header else 0,
            encoding=encoding,
            block_size=block_size,
        ),
        "parse_options": pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"',
            double_quote=True,
            newlines_in_values=True,
            # With one column an empty line is a missing value, not a blank line.
            ignore_empty_lines=width > 1,
            invalid_row_handler=on_invalid,
        ),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            null_values=list(NULL_SPELLINGS),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            include_columns=[names[i] for i in include] if include is not None else None,
        ),
    }


class _RaggedRows:
    """Remembers the first row whose field count differs from the header's."""

    def __init__(self) -> None:
        self.expected: int | None = None
        self.actual: int | None = None

    def __call__(self, row: Any) -> str:
        if self.expected is None:
            self.expected, self.actual = row.expected_columns, row.actual_columns
        return "error"

    def error(self) -> DatadlError:
        return unsupported(
            f"A row has {self.actual} fields where the header has {self.expected}.",
            hint="Check the delimiter and the quoting: every row needs as many fields as the "
            "header.",
        )


def _string_batches(
    stream: BinaryIO, options: dict[str, Any], ragged: _RaggedRows
) -> Generator[pa.RecordBatch, None, None]:
    try:
        reader = pacsv.open_csv(stream, **options)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        if ragged.expected is not None:
            raise ragged.error() from exc
        raise


class _NotThisEncoding(Exception):
    pass


def _is_encoding_error(exc: BaseException) -> bool:
    return isinstance(exc, UnicodeDecodeError) or "invalid UTF8" in str(exc)


def scan(
    open_stream: Callable[[], BinaryIO],
    *,
    delimiter: str,
    limit_rows: int | None = None,
    ahead: Ahead | None = None,
) -> TextPlan:
    """First pass over a delimited file: encoding, header, column types and row count.

    With ``limit_rows`` the pass stops after about that many rows (a partial plan). With
    ``ahead`` (and no limit) the rows are also handed on, typed as inferred so far, in the
    same batches a second pass would give (see ``Ahead``).
    """
    if ahead is not None and limit_rows is not None:
        ahead.stop()
    with open_stream() as stream:
        head = _read_head(stream)
    encoding = _encoding_of(head)
    candidates = (encoding, *_FALLBACK_ENCODINGS) if encoding == "utf8" else (encoding,)
    for candidate in candidates:
        try:
            return _scan_with(open_stream, head, candidate, delimiter, limit_rows, ahead)
        except _NotThisEncoding:
            continue
    raise unsupported("The file's text encoding could not be recognised.")  # pragma: no cover


def _scan_with(
    open_stream: Callable[[], BinaryIO],
    head: bytes,
    encoding: str,
    delimiter: str,
    limit_rows: int | None,
    ahead: Ahead | None,
) -> TextPlan:
    if ahead is not None and not ahead.active:
        ahead = None
    if not head.removeprefix(_UTF8_BOM).strip():
        return TextPlan(columns=(), row_count=0, encoding=encoding, delimiter=delimiter)
    record = _first_record(head, encoding, delimiter)
    if delimiter == "," and record is not None and len(record) == 1 and ";" in record[0]:
        # A file exported with a European locale separates with semicolons.
        delimiter = ";"
        record = _first_record(head, encoding, delimiter)
    if not record:
        return TextPlan(columns=(), row_count=0, encoding=encoding, delimiter=delimiter)
    width = len(record)
    guesses = [ColumnGuess(f"c{i}") for i in range(width)]
    ragged = _RaggedRows()
    block = _BLOCK_BYTES if limit_rows is None else _PREFIX_BLOCK_BYTES
    options = _options(
        width, encoding, delimiter, skip_header=False, on_invalid=ragged, block_size=block
    )
    first_row: list[str | None] | None = None
    rows = 0
    complete = True
    tentative = _Tentative(ahead, record) if ahead is not None else None
    try:
        with open_stream() as stream, column_pool() as pool:
            batches = _string_batches(stream, options, ragged)
            for batch in batches:
                head_row = None
                if first_row is None and batch.num_rows:
                    first_row = [batch.column(i)[0].as_py() for i in range(width)]
                    head_row = batch.slice(0, 1)
                    batch = batch.slice(1)
                rows += batch.num_rows
                list(pool.map(ColumnGuess.observe, guesses, batch.columns))
                if tentative is not None and first_row is not None:
                    tentative.step(guesses, first_row, head_row, batch, pool)
                if limit_rows is not None and rows >= limit_rows:
                    complete = False
                    batches.close()
                    break
    except (Aborted, DatadlError):
        raise
    except Exception as exc:
        if _is_encoding_error(exc) and encoding in ("utf8", *_FALLBACK_ENCODINGS[:-1]):
            raise _NotThisEncoding from exc
        raise unsupported(
            f"The file does not parse as delimited text: {arrow_message(exc)}"
        ) from exc
    plans = [g.plan() for g in guesses]
    header = _has_header(plans, first_row)
    if header:
        names = unique_names(record)
    else:
        names = [f"column_{i + 1}" for i in range(width)]
        row0 = pa.array(first_row, pa.string())
        for i, guess in enumerate(guesses):
            guess.observe(row0.slice(i, 1))
        rows += 1
    columns = tuple(g.plan(name) for g, name in zip(guesses, names, strict=True))
    if tentative is not None:
        tentative.finish(columns, header)
    return TextPlan(
        columns=columns,
        row_count=rows,
        encoding=encoding,
        delimiter=delimiter,
        header=header,
        complete=complete,
    )


def _has_header(plans: Sequence[ColumnPlan], first_row: Sequence[str | None] | None) -> bool:
    if first_row is None:
        return True
    typed = [i for i, p in enumerate(plans) if p.kind is not None]
    # Without a header every cell of the first row reads as its column's type.
    return not (typed and all(plans[i].fits(first_row[i]) for i in typed))


class _Tentative:
    """Hands a first pass's rows on to ``ahead``, typed as inferred so far.

    The plan is fixed after the first batch; every later batch is handed on only once it
    has been observed and the plan still reads every column the same way. Batches are cut
    as the second pass cuts them (its rows, regrouped to ``batch_rows``), so the work
    gets exactly the batches it would have got from a second pass.
    """

    def __init__(self, ahead: Ahead, record: Sequence[str]) -> None:
        self._ahead = ahead
        self._record = record
        self._plans: tuple[ColumnPlan, ...] | None = None
        self._header = True
        self._regroup = Regroup(ahead.batch_rows)
        self._schema: pa.Schema | None = None

    def step(
        self,
        guesses: Sequence[ColumnGuess],
        first_row: Sequence[str | None],
        head_row: pa.RecordBatch | None,
        batch: pa.RecordBatch,
        pool: Any,
    ) -> None:
        if not self._ahead.active:
            return
        current = [g.plan() for g in guesses]
        if self._plans is None:
            self._header = _has_header(current, first_row)
            names = (
                unique_names(self._record)
                if self._header
                else [f"column_{i + 1}" for i in range(len(current))]
            )
            self._plans = tuple(
                ColumnPlan(name, p.kind, p.arrow_type, p.date_formats)
                for p, name in zip(current, names, strict=True)
            )
            self._schema = pa.schema([pa.field(p.name, p.arrow_type) for p in self._plans])
            self._ahead.start(self._schema)
            if not self._header and head_row is not None:
                self._hand_on(self._regroup.push(head_row), pool)
        elif not all(a.reads_like(b) for a, b in zip(self._plans, current, strict=True)):
            self._ahead.stop()
            return
        self._hand_on(self._regroup.push(batch), pool)

    def _hand_on(self, ready: list[pa.RecordBatch], pool: Any) -> None:
        assert self._plans is not None
        for strings in ready:
            if not self._ahead.active:
                return
            try:
                arrays = list(pool.map(ColumnPlan.convert, self._plans, strings.columns))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                self._ahead.stop()
                return
            self._ahead.feed(pa.RecordBatch.from_arrays(arrays, schema=self._schema))

    def finish(self, columns: Sequence[ColumnPlan], header: bool) -> None:
        """The pass is over: hand on the last rows, and say whether the work holds."""
        if not self._ahead.active or self._plans is None:
            self._ahead.stop()
            return
        same = header == self._header and all(
            a.name == b.name and a.reads_like(b) for a, b in zip(self._plans, columns, strict=True)
        )
        if not same:
            self._ahead.stop()
            return
        with column_pool() as pool:
            self._hand_on(self._regroup.flush(), pool)
        self._ahead.held = self._ahead.active


def batches(
    open_stream: Callable[[], BinaryIO],
    plan: TextPlan,
    *,
    batch_rows: int,
    columns: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Second pass: typed record batches of the columns asked for (all by default)."""
    if not plan.columns:
        return
    wanted, schema = plan.selection(columns)
    ragged = _RaggedRows()
    options = _options(
        len(plan.columns),
        plan.encoding,
        plan.delimiter,
        skip_header=plan.header,
        on_invalid=ragged,
        include=wanted,
    )
    plans = [plan.columns[i] for i in wanted]
    with open_stream() as stream, column_pool() as pool:
        try:
            for batch in rechunk(_string_batches(stream, options, ragged), batch_rows):
                arrays = list(pool.map(ColumnPlan.convert, plans, batch.columns))
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except (Aborted, DatadlError):
            raise
        except Exception as exc:
            raise unsupported(
                f"The file does not parse as delimited text: {arrow_message(exc)}"
            ) from exc
