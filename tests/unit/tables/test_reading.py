"""Reading pieces of the table engine: json array splitting and text type inference."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadl.adapters.tables import _csv, _json
from datadl.adapters.tables._infer import ColumnGuess, Kind
from datadl.domain.errors import UnsupportedFormat

_TRICKY = st.text(st.sampled_from(list('ab"\\[]{},: \n\té\u2028')), max_size=8)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=8,
)
_OBJECTS = st.lists(st.dictionaries(_TRICKY, _VALUES, max_size=4), max_size=12)


class _Trickle(io.RawIOBase):
    """A stream that hands out its bytes in the given piece sizes."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        super().__init__()
        self._data = data
        self._sizes = sizes or [1]
        self._at = 0
        self._turn = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        step = self._sizes[self._turn % len(self._sizes)]
        self._turn += 1
        piece = self._data[self._at : self._at + step]
        self._at += len(piece)
        return piece


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OBJECTS, st.sampled_from([None, 0, 2]), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_json_array_becomes_one_object_per_line_across_any_chunking(
    objects: list[dict[str, Any]], indent: int | None, sizes: list[int]
) -> None:
    """Whatever the layout and however the bytes arrive, each object lands on its own line."""
    data = json.dumps(objects, indent=indent, ensure_ascii=False).encode()
    scanner = _json.ArrayToLines()
    stream = _Trickle(data, sizes)
    out = b""
    while piece := stream.read():
        out += scanner.feed(piece)
    scanner.finish()
    lines = [line for line in out.split(b"\n") if line.strip()]
    assert [json.loads(line) for line in lines] == objects


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OBJECTS.filter(bool), st.data())
def test_a_json_array_cut_anywhere_is_refused(
    objects: list[dict[str, Any]], data: st.DataObject
) -> None:
    """A json array that stops before its closing bracket is unsupported, wherever it stops."""
    text = json.dumps(objects).encode()
    cut = data.draw(st.integers(1, len(text) - 1))
    scanner = _json.ArrayToLines()

    def read() -> None:
        scanner.feed(text[:cut])
        scanner.finish()

    with pytest.raises(UnsupportedFormat):
        read()


def _plan(*values: str | None) -> Any:
    guess = ColumnGuess("c")
    # Two batches, so that the evidence of both is merged.
    half = len(values) // 2
    guess.observe(pa.array(values[:half], pa.string()))
    guess.observe(pa.array(values[half:], pa.string()))
    return guess.plan()


@pytest.mark.parametrize(
    ("values", "kind", "arrow_type"),
    [
        (["1", " -2", "007", None], Kind.INTEGER, pa.int64()),
        (["1", "2.5", "1e3", "-inf", "nan"], Kind.FLOAT, pa.float64()),
        (["true", "FALSE", " True"], Kind.BOOLEAN, pa.bool_()),
        (["2024-02-29", "1999-12-31"], Kind.DATE, pa.date32()),
        (["2024/02/29", "1999/12/31"], Kind.DATE, pa.date32()),
        (["13/01/2024", "01/02/2024"], Kind.DATE, pa.date32()),
        (["2024-01-01T10:00", "2024-01-01 10:00:00.5"], Kind.TIMESTAMP, pa.timestamp("us")),
        (["2024-01-01T10:00:00.123456789"], Kind.TIMESTAMP, pa.timestamp("ns")),
        (
            ["2024-01-01T10:00Z", "2024-01-01T10:00:00+02:00"],
            Kind.TIMESTAMP_TZ,
            pa.timestamp("us", "UTC"),
        ),
        (["123456789012345678901234567890", "1"], Kind.INTEGER, pa.decimal128(38, 0)),
        (["1", "2", "2.5", "-3.5"], Kind.FLOAT, pa.float64()),
        (["2024/01/01", "2024/01/02", "2024-01-03T10:00", "2024-01-04"], None, pa.string()),
        (["Yes", "No"], None, pa.string()),
        ([None, None], None, pa.string()),
    ],
)
def test_text_columns_get_the_narrowest_type_all_values_fit(
    values: list[str | None], kind: Kind | None, arrow_type: pa.DataType
) -> None:
    """Each column takes the narrowest type that all its values fit, and converts to it."""
    plan = _plan(*values)
    assert (plan.kind, plan.arrow_type) == (kind, arrow_type)
    converted = plan.convert(pa.array(values, pa.string()))
    assert converted.null_count == sum(v is None for v in values)


def test_day_first_dates_are_read_day_first() -> None:
    """Slash dates read day-first when some day exceeds twelve, and the values agree."""
    plan = _plan("13/01/2024", "02/03/2024")
    assert plan.date_formats == ("%d/%m/%Y",)
    assert [d.isoformat() for d in plan.convert(pa.array(["02/03/2024"])).to_pylist()] == [
        "2024-03-02"
    ]


def test_mixed_date_layouts_are_a_finding_with_their_count() -> None:
    """Dates in a minority layout still convert, and are counted as a consistency finding."""
    plan = _plan("2024-01-01", "2024-01-02", "2024-01-03", "01/04/2024")
    assert plan.kind is Kind.DATE
    assert [(f.kind, f.affected_rows) for f in plan.findings] == [("mixed_date_formats", 1)]
    days = plan.convert(pa.array(["01/04/2024", "2024-01-02"])).to_pylist()
    assert [d.isoformat() for d in days] == ["2024-01-04", "2024-01-02"]


def test_a_mismatch_counts_exactly_the_values_that_do_not_fit() -> None:
    """Text among numbers makes a text column, with the misfits counted and one shown."""
    plan = _plan(*[str(i) for i in range(100)], "n/a", "2024-13-45", "12")
    assert plan.kind is None
    assert [(f.kind, f.affected_rows) for f in plan.findings] == [("type_mismatch", 2)]
    assert "'n/a'" in plan.findings[0].message


def test_an_invalid_calendar_date_is_not_a_date() -> None:
    """2023-02-29 looks like a date but is not one, so the column is text with one misfit."""
    plan = _plan("2024-02-28", "2023-02-29", "2024-03-01")
    assert plan.kind is None
    assert [(f.kind, f.affected_rows) for f in plan.findings] == [("type_mismatch", 1)]


@pytest.mark.parametrize(
    ("text", "header", "names"),
    [
        (b"a,b\n1,2\n", True, ["a", "b"]),
        (b"1,2\n3,4\n", False, ["column_1", "column_2"]),
        (b"x,x,\n1,2,3\n", True, ["x", "x_2", "column_3"]),
        (b"a;b\n1;2\n", True, ["a", "b"]),
    ],
)
def test_header_detection_and_column_names(text: bytes, header: bool, names: list[str]) -> None:
    """A first row of typed values is data; blank and repeated names are made unique."""
    plan = _csv.scan(lambda: io.BytesIO(text), delimiter=",")
    assert plan.header is header
    assert [c.name for c in plan.columns] == names
    assert plan.row_count == (1 if header else 2)


def test_dates_then_times_make_a_timestamp_column_with_mixed_layouts() -> None:
    """Plain dates in one batch and date-times in the next read as timestamps, flagged as mixed."""
    plan = _plan("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04T10:00", "2024-01-05 11:00")
    assert (plan.kind, plan.arrow_type) == (Kind.TIMESTAMP, pa.timestamp("us"))
    assert [(f.kind, f.affected_rows) for f in plan.findings] == [("mixed_date_formats", 2)]
