"""csv in one pass: rows handed on during type inference (to statistics or a conversion)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datadl.adapters.memory import MemoryBlobStore
from datadl.adapters.tables import ArrowTableEngine, _csv
from datadl.adapters.tables._plan import Ahead, Regroup, rechunk
from datadl.adapters.tables._writers import Emit, dictionary_columns, write_parquet
from datadl.adapters.tables.engine import _WriteAhead
from datadl.domain.model import FileFormat
from datadl.domain.tables import TableProfile
from datadl.ports.tables import ConvertOptions
from tests.contract.test_tables import stored

#: More than one block of the reader (1 MiB), so that inference sees several batches.
_MANY = 150_000


class _Recorder(Ahead):
    def __init__(self, batch_rows: int) -> None:
        super().__init__(batch_rows)
        self.schema: pa.Schema | None = None
        self.batches: list[pa.RecordBatch] = []
        self.starts = 0

    def start(self, schema: pa.Schema) -> None:
        self.starts += 1
        self.schema = schema
        self.batches = []

    def feed(self, batch: pa.RecordBatch) -> None:
        assert batch.schema == self.schema
        self.batches.append(batch)


def _ints(n: int, start: int = 0) -> str:
    return "".join(f"{i},{i % 7}.5,name{i % 11}\n" for i in range(start, start + n))


_HELD = {
    "header": b"a,b,c\n" + _ints(_MANY).encode(),
    "no header": _ints(_MANY).encode(),
    "few rows": b"a,b,c\n1,2.5,x\n",
    "header only": b"a,b,c\n",
    "latin-1": ("a,b,c\n" + _ints(_MANY) + "3,1.5,caf\u00e9\n").encode("latin-1"),
    "text in the first block": b"a,b,c\nx,1.5,y\n" + _ints(_MANY).encode(),
}
_CHANGED = {
    "text after the first block": b"a,b,c\n" + _ints(_MANY).encode() + b"oops,1.5,y\n",
    "no header, then text": b"1,2.5,x\n" + _ints(_MANY).encode() + b"y,1.5,z\n",
}


def _open(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


@pytest.mark.parametrize("name", list(_HELD))
def test_handed_on_rows_are_the_second_pass_batches_when_types_hold(name: str) -> None:
    """With types stable to the end, the first pass hands on exactly the second pass's batches."""
    data = _HELD[name]
    recorder = _Recorder(batch_rows=20_000)
    plan = _csv.scan(_open(data), delimiter=",", ahead=recorder)
    assert recorder.held
    second = list(_csv.batches(_open(data), plan, batch_rows=20_000))
    assert recorder.schema == plan.schema
    assert [b.num_rows for b in recorder.batches] == [b.num_rows for b in second]
    assert all(a.equals(b) for a, b in zip(recorder.batches, second, strict=True))


@pytest.mark.parametrize("name", list(_CHANGED))
def test_a_type_that_changes_late_voids_the_handed_on_rows(name: str) -> None:
    recorder = _Recorder(batch_rows=20_000)
    _csv.scan(_open(_CHANGED[name]), delimiter=",", ahead=recorder)
    assert not recorder.held
    assert not recorder.active


def test_a_limited_pass_hands_nothing_on() -> None:
    recorder = _Recorder(batch_rows=10)
    _csv.scan(_open(_HELD["header"]), delimiter=",", limit_rows=100, ahead=recorder)
    assert not recorder.held
    assert recorder.starts == 0


def test_regroup_cuts_the_same_batches_as_rechunk() -> None:
    batch = pa.record_batch({"x": list(range(23))})
    pieces = [batch.slice(0, 5), batch.slice(5, 0), batch.slice(5, 11), batch.slice(16)]
    regroup = Regroup(4)
    pushed = [b for piece in pieces for b in regroup.push(piece)] + regroup.flush()
    expected = list(rechunk(pieces, 4))
    assert [b.num_rows for b in pushed] == [b.num_rows for b in expected]
    assert pa.Table.from_batches(pushed).equals(pa.Table.from_batches(expected))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [*((n, FileFormat.CSV) for n in (*_HELD, *_CHANGED)), ("tsv", FileFormat.TSV)],
)
def test_a_one_pass_profile_equals_the_two_pass_profile(name: str, fmt: FileFormat) -> None:
    """The profile is the same whether statistics were taken during inference or after it."""
    data = b"a\tb\n" + b"".join(f"{i}\tx{i % 3}\n".encode() for i in range(_MANY))
    if fmt is FileFormat.CSV:
        data = {**_HELD, **_CHANGED}[name]

    async def run() -> tuple[TableProfile, TableProfile]:
        blobs = MemoryBlobStore(chunk_size=1 << 16)
        engine = ArrowTableEngine(
            blobs, batch_rows=30_000, exact_distinct=1_000_000, exact_rows=50_000
        )
        file = await stored(blobs, data, fmt)
        first = await engine.profile(file)  # no plan yet: one pass when types hold
        second = await engine.profile(file)  # plan remembered: the second pass alone
        return first, second

    first, second = asyncio.run(run())
    assert first.statistics == second.statistics
    assert first.quality == second.quality
    assert first.columns == second.columns
    assert first.row_count == second.row_count


@pytest.mark.parametrize("name", ["header", "no header", "text after the first block"])
@pytest.mark.parametrize(
    "target",
    [FileFormat.CSV, FileFormat.TSV, FileFormat.JSONL, FileFormat.JSON, FileFormat.PARQUET],
)
def test_a_one_pass_conversion_equals_the_two_pass_conversion(
    name: str, target: FileFormat
) -> None:
    """Written during inference (types held) or after it, a conversion gives the same bytes."""
    data = {**_HELD, **_CHANGED}[name]

    async def run() -> tuple[bytes, bytes]:
        blobs = MemoryBlobStore(chunk_size=1 << 16)
        engine = ArrowTableEngine(blobs, batch_rows=30_000, row_group_rows=40_000)
        file = await stored(blobs, data, FileFormat.CSV)
        cold = b"".join([c async for c in engine.convert(file, target, ConvertOptions())])
        warm = b"".join([c async for c in engine.convert(file, target, ConvertOptions())])
        return cold, warm

    cold, warm = asyncio.run(run())
    assert cold == warm
    assert len(cold) > 1000


def test_a_failing_write_ahead_is_left_to_the_second_pass(tmp_path: Path) -> None:
    """A writer that fails during the first pass voids it; nothing waits for ever."""

    def write(batches: Iterable[pa.RecordBatch], schema: pa.Schema, emit: Emit) -> None:
        for _ in batches:
            raise RuntimeError("disk full")

    writer = _WriteAhead(20_000, write, str(tmp_path / "spool"))
    try:
        _csv.scan(_open(_HELD["header"]), delimiter=",", ahead=writer)
        assert writer.held
        assert writer.result() is False
    finally:
        writer.close()


def test_parquet_dictionaries_only_for_columns_with_few_distinct_values() -> None:
    batch = pa.record_batch(
        {
            "id": list(range(100)),
            "kind": ["a", "b"] * 50,
            "sparse": [None] * 99 + [1.5],
            "empty": pa.nulls(100, pa.string()),
        }
    )
    assert dictionary_columns(batch) == ["kind", "empty"]
    nested = pa.record_batch({"id": list(range(3)), "tags": [[1], [2], []]})
    assert dictionary_columns(nested) is True


def test_parquet_output_keeps_every_value_with_or_without_dictionaries() -> None:
    table = pa.table({"id": list(range(1000)), "kind": ["a", "b"] * 500})
    out: list[bytes] = []
    write_parquet(table.to_batches(max_chunksize=300), table.schema, out.append, row_group_rows=400)
    read = pq.read_table(io.BytesIO(b"".join(out)))
    assert read.equals(table)
    encodings = pq.ParquetFile(io.BytesIO(b"".join(out))).metadata.row_group(0)
    assert "PLAIN_DICTIONARY" not in str(encodings.column(0).encodings)
    assert any("DICTIONARY" in e for e in encodings.column(1).encodings)
    out.clear()
    write_parquet([], table.schema, out.append, row_group_rows=400)
    assert pq.read_table(io.BytesIO(b"".join(out))).num_rows == 0
