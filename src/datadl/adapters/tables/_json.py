"""Reading json (a top-level array of objects) and jsonl as a stream of typed batches.

A json array is turned into json lines on the fly: a vectorised scan (numpy) tracks string
and nesting state across chunks and rewrites the array's brackets and its top-level commas,
so pyarrow's line-delimited reader parses the objects in blocks. Blocks whose values change
type (a number, then text) fall back to the standard library parser for that block only.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from datadl.adapters.tables._bridge import Aborted
from datadl.adapters.tables._infer import TEMPORAL_KINDS, ColumnGuess, ColumnPlan, Finding
from datadl.adapters.tables._plan import TextPlan, arrow_message, rechunk, unsupported
from datadl.domain.errors import DatadlError

#: Bytes scanned at a time; the scan's temporary arrays take about 30 bytes per byte.
_CHUNK = 1 << 20
_BLOCK = 8 << 20
_BLANK = b" \t\r\n"
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN_OBJ, _CLOSE_OBJ, _OPEN_ARR, _CLOSE_ARR, _COMMA = 0x7B, 0x7D, 0x5B, 0x5D, 0x2C
_NEWLINE = 0x0A
_SPECIAL = np.zeros(256, dtype=bool)
_SPECIAL[[_QUOTE, _BACKSLASH, _OPEN_OBJ, _CLOSE_OBJ, _OPEN_ARR, _CLOSE_ARR, _COMMA]] = True
#: Raw line breaks are never inside a valid json string, so all of them become spaces.
_NO_BREAKS = bytes.maketrans(b"\r\n", b"  ")
_UTF8_BOM = b"\xef\xbb\xbf"


class ArrayToLines:
    """Rewrites a json array of objects, chunk by chunk, into one object per line.

    Only the bytes that matter (quotes, backslashes, brackets and commas) are looked at:
    their positions are gathered with numpy, and string state, escapes and nesting depth
    are computed over that much shorter sequence, carrying state from chunk to chunk.
    Elements that are not objects are left for the line reader to refuse.
    """

    def __init__(self) -> None:
        self._started = False
        self._closed = False
        self._in_string = False
        self._depth = 0
        self._backslashes = 0
        self._first = True

    def feed(self, chunk: bytes) -> bytes:
        """The rewritten chunk (same length but for a leading byte order mark)."""
        if self._first:
            chunk = chunk.removeprefix(_UTF8_BOM)
            self._first = False
        if not chunk:
            return b""
        if self._closed:
            self._check_tail(chunk)
            return chunk.translate(_NO_BREAKS)
        if not self._started:
            solid = chunk.lstrip(_BLANK)
            if not solid:
                return chunk.translate(_NO_BREAKS)
            if solid[0] != _OPEN_ARR:
                raise unsupported(
                    "The json file is not an array of objects.",
                    hint="Upload a json array of objects, or json lines (one object per line).",
                )
            self._started = True
        raw = np.frombuffer(chunk, dtype=np.uint8)
        out = np.frombuffer(chunk.translate(_NO_BREAKS), dtype=np.uint8).copy()
        positions = np.flatnonzero(_SPECIAL[raw])
        if len(positions) == 0:
            self._backslashes = 0
            return out.tobytes()
        marks = raw[positions]
        real = self._unescaped_quotes(marks, positions, len(raw))
        toggles = np.zeros(len(marks), dtype=np.int8)
        toggles[real] = 1
        inside = ((np.cumsum(toggles, dtype=np.int64) + int(self._in_string)) % 2).astype(bool)
        outside = ~inside & ~toggles.astype(bool)
        delta = np.zeros(len(marks), dtype=np.int8)
        delta[outside & ((marks == _OPEN_OBJ) | (marks == _OPEN_ARR))] = 1
        delta[outside & ((marks == _CLOSE_OBJ) | (marks == _CLOSE_ARR))] = -1
        depth_after = self._depth + np.cumsum(delta, dtype=np.int64)
        depth_before = depth_after - delta
        if (depth_after < 0).any():
            raise unsupported("The json array has more closing brackets than opening ones.")
        self._in_string = bool(inside[-1])
        self._depth = int(depth_after[-1])
        out[positions[outside & (marks == _COMMA) & (depth_before == 1)]] = _NEWLINE
        out[positions[outside & (marks == _OPEN_ARR) & (depth_before == 0)]] = ord(" ")
        closing = positions[outside & (marks == _CLOSE_ARR) & (depth_after == 0)]
        if len(closing):
            out[closing[0]] = ord(" ")
            self._closed = True
            self._check_tail(chunk[int(closing[0]) + 1 :])
        return out.tobytes()

    def _unescaped_quotes(self, marks: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
        """Indices (into ``marks``) of the quotes that no backslash escapes."""
        count = len(marks)
        is_bs = marks == _BACKSLASH
        index = np.arange(count)
        adjacent = np.zeros(count, dtype=bool)
        adjacent[1:] = positions[1:] == positions[:-1] + 1
        # Backslashes form a run only while they touch; an odd run just before a quote
        # escapes it. A run that begins at the chunk's first byte continues the previous
        # chunk's trailing run.
        continues = np.zeros(count, dtype=bool)
        continues[1:] = is_bs[1:] & is_bs[:-1] & adjacent[1:]
        run_start = np.maximum.accumulate(np.where(is_bs & ~continues, index, -1))
        carried = np.where(positions[np.maximum(run_start, 0)] == 0, self._backslashes, 0)
        run_length = index - run_start + 1 + carried
        quotes = np.flatnonzero(marks == _QUOTE)
        before = np.maximum(quotes - 1, 0)
        has_run = (quotes > 0) & is_bs[before] & adjacent[quotes]
        length = np.where(has_run, run_length[before], 0)
        length = np.where(positions[quotes] == 0, self._backslashes, length)
        if is_bs[-1] and positions[-1] == size - 1:
            self._backslashes = int(run_length[-1])
        else:
            self._backslashes = 0
        unescaped: np.ndarray = quotes[length % 2 == 0]
        return unescaped

    def _check_tail(self, rest: bytes) -> None:
        if rest.strip(_BLANK):
            raise unsupported("The json file has more content after its top-level array.")

    def finish(self) -> None:
        """Raise when the input ended before its array closed."""
        if not self._started:
            raise unsupported("The json file is empty.", hint="Upload a json array of objects.")
        if self._depth != 0 or self._in_string or not self._closed:
            raise unsupported(
                "The json array ends before it is closed: the file looks cut off.",
                hint="Upload the complete file.",
            )


def line_blocks(
    stream: BinaryIO, *, array: bool, block_bytes: int = _BLOCK
) -> Generator[bytes, None, None]:
    """Blocks of whole json lines, each ending with a newline."""
    scanner = ArrayToLines() if array else None
    carry = b""
    first = True
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        if scanner is not None:
            chunk = scanner.feed(chunk)
        elif first:
            chunk = chunk.removeprefix(_UTF8_BOM)
        first = False
        carry += chunk
        if len(carry) >= block_bytes:
            cut = carry.rfind(b"\n") + 1
            if cut:
                yield carry[:cut]
                carry = carry[cut:]
    if scanner is not None:
        scanner.finish()
    if carry.strip():
        yield carry + b"\n"


def _json_kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_timestamp(t):
        return "string"
    if pa.types.is_struct(t):
        return "object"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "array"
    return "null"


def _value_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    return "array"


class _Conflict(Exception):
    pass


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type that holds values of both ``a`` and ``b``; ``_Conflict`` if none."""
    if a == b:
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(f(a) for f in numeric) and any(f(b) for f in numeric):
        return pa.float64()
    text = (pa.types.is_string, pa.types.is_timestamp)
    if any(f(a) for f in text) and any(f(b) for f in text):
        return pa.string()
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fields: dict[str, pa.DataType] = {f.name: f.type for f in a}
        for f in b:
            fields[f.name] = unify(fields[f.name], f.type) if f.name in fields else f.type
        return pa.struct([pa.field(k, v) for k, v in fields.items()])
    if pa.types.is_list(a) and pa.types.is_list(b):
        return pa.list_(unify(a.value_type, b.value_type))
    raise _Conflict


class _Column:
    def __init__(self, name: str) -> None:
        self.name = name
        self.type: pa.DataType = pa.null()
        self.conflict = False
        self.kinds: Counter[str] = Counter()
        self.guess = ColumnGuess(name, TEMPORAL_KINDS)

    def merge(self, t: pa.DataType) -> None:
        if self.conflict:
            return
        if pa.types.is_timestamp(t):
            t = pa.string()
        try:
            self.type = unify(self.type, t)
        except _Conflict:
            self.conflict = True
            self.type = pa.string()

    def plan(self) -> ColumnPlan:
        if self.conflict:
            total = sum(v for k, v in self.kinds.items() if k != "null")
            kind, most = max(self.kinds.items(), key=lambda kv: kv[1])
            if most < total:
                misfits = total - most
                message = (
                    f"{misfits} of {total} values in column {self.name!r} are not {kind} "
                    "values; the column is read as text."
                )
            else:
                misfits = total
                message = (
                    f"The nested values in column {self.name!r} do not share one type; "
                    "the column is read as json text."
                )
            finding = Finding(self.name, "type_mismatch", misfits, message)
            return ColumnPlan(self.name, None, pa.string(), findings=(finding,))
        if pa.types.is_string(self.type):
            return self.guess.plan()
        if pa.types.is_null(self.type):
            return ColumnPlan(self.name, None, pa.string())
        return ColumnPlan(self.name, None, self.type)


def _read_arrow(block: bytes, schema: pa.Schema | None, behaviour: str) -> pa.Table:
    return pajson.read_json(
        io.BytesIO(block),
        read_options=pajson.ReadOptions(use_threads=True, block_size=len(block) + 1),
        parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior=behaviour
        ),
    )


def _read_python(block: bytes, first_line: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for offset, line in enumerate(block.split(b"\n")):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise unsupported(
                f"Record {first_line + offset + 1} is not valid json: {arrow_message(exc)}.",
                hint="Check that the file is complete json, one object per record.",
            ) from exc
        if not isinstance(value, dict):
            raise unsupported(
                f"Record {first_line + offset + 1} is not a json object.",
                hint="Every record must be an object of column values.",
            )
        rows.append(value)
    return rows


def scan(
    open_stream: Callable[[], BinaryIO], *, array: bool, limit_rows: int | None = None
) -> TextPlan:
    """First pass: the union of the objects' fields and types, and the row count.

    With ``limit_rows`` the pass stops after about that many rows (a partial plan).
    """
    columns: dict[str, _Column] = {}
    rows = 0
    complete = True
    with open_stream() as stream:
        blocks = line_blocks(stream, array=array)
        for block in blocks:
            table = _scan_block_arrow(block, columns)
            if table is None:
                rows += _scan_block_python(block, columns, rows)
            else:
                rows += table.num_rows
            if limit_rows is not None and rows >= limit_rows:
                complete = False
                blocks.close()
                break
    plans = tuple(c.plan() for c in columns.values())
    read_fields = []
    for column, plan in zip(columns.values(), plans, strict=True):
        read_type = pa.string() if plan.kind is not None else plan.arrow_type
        read_fields.append(pa.field(column.name, read_type))
    return TextPlan(
        columns=plans,
        row_count=rows,
        complete=complete,
        read_schema=pa.schema(read_fields),
        stringify=frozenset(c.name for c in columns.values() if c.conflict),
    )


def _scan_block_arrow(block: bytes, columns: dict[str, _Column]) -> pa.Table | None:
    text = [pa.field(name, pa.string()) for name, c in columns.items() if c.type == pa.string()]
    try:
        table = _read_arrow(block, pa.schema(text) if text else None, "infer")
        surprise = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        if surprise:
            # pyarrow reads ISO-looking text as timestamps; this engine infers those itself.
            order = table.schema.names
            text += [pa.field(name, pa.string()) for name in surprise]
            table = _read_arrow(block, pa.schema(text), "infer").select(order)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    for field, data in zip(table.schema, table.columns, strict=True):
        column = columns.setdefault(field.name, _Column(field.name))
        present = len(data) - data.null_count
        if present:
            column.kinds[_json_kind(field.type)] += present
        column.merge(field.type)
        if not column.conflict and pa.types.is_string(field.type):
            for chunk in data.chunks:
                column.guess.observe(chunk)
    return table


def _scan_block_python(block: bytes, columns: dict[str, _Column], first_line: int) -> int:
    records = _read_python(block, first_line)
    names = dict.fromkeys(key for record in records for key in record)
    for name in names:
        seen = [record.get(name) for record in records]
        column = columns.setdefault(name, _Column(name))
        kinds = Counter(_value_kind(v) for v in seen)
        kinds.pop("null", None)
        column.kinds.update(kinds)
        if len(kinds) > 1:
            column.conflict = True
            column.type = pa.string()
            continue
        try:
            array = pa.array(seen)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            column.conflict = True
            column.type = pa.string()
            continue
        column.merge(array.type)
        if not column.conflict and pa.types.is_string(array.type):
            column.guess.observe(array)
    return len(records)


def _stringified(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _block_table(block: bytes, plan: TextPlan, first_line: int) -> pa.Table:
    schema = plan.read_schema
    assert schema is not None, "a json plan always has a read schema"
    try:
        return _read_arrow(block, schema, "ignore")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    records = _read_python(block, first_line)
    arrays = []
    for field in schema:
        seen = [record.get(field.name) for record in records]
        if field.name in plan.stringify:
            seen = [_stringified(v) for v in seen]
        arrays.append(pa.array(seen, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def batches(
    open_stream: Callable[[], BinaryIO],
    plan: TextPlan,
    *,
    array: bool,
    batch_rows: int,
    columns: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Second pass: typed record batches of the columns asked for (all by default)."""
    if not plan.columns:
        return
    wanted, schema = plan.selection(columns)
    lines = 0
    with open_stream() as stream:
        try:
            for block in line_blocks(stream, array=array):
                table = _block_table(block, plan, lines)
                lines += table.num_rows
                for batch in rechunk(table.to_batches(), batch_rows):
                    arrays = [plan.columns[i].convert(batch.column(i)) for i in wanted]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except (Aborted, DatadlError):
            raise
        except Exception as exc:
            raise unsupported(f"The json does not parse: {arrow_message(exc)}") from exc
