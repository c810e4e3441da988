"""Unit tests for Range header parsing in datadl.domain.ranges."""

from __future__ import annotations

import string
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from datadl.domain.errors import RangeNotSatisfiable
from datadl.domain.ranges import MAX_RANGES, ByteRange, is_multipart, parse_range

SIZE = 10_000


def spans(result: tuple[ByteRange, ...] | None) -> list[tuple[int, int]] | None:
    """The (start, end) pairs of a parse result, for compact comparisons."""
    return None if result is None else [(r.start, r.end) for r in result]


# --- ByteRange -------------------------------------------------------------------------


def test_length_counts_both_ends() -> None:
    """A range's length includes both its first and its last byte."""
    assert ByteRange(0, 0).length == 1
    assert ByteRange(500, 999).length == 500


def test_content_range_format() -> None:
    """content_range renders "bytes first-last/size" as Content-Range expects."""
    assert ByteRange(9500, 9999).content_range(SIZE) == "bytes 9500-9999/10000"


def test_content_range_rejects_range_past_the_end() -> None:
    """content_range refuses a range that does not fit in the stated size."""
    with pytest.raises(ValueError, match="exceeds"):
        ByteRange(0, 10).content_range(10)


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (5, 4)])
def test_byte_range_rejects_negative_or_reversed(start: int, end: int) -> None:
    """A ByteRange cannot start before 0 or end before it starts."""
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(start, end)


def test_is_multipart() -> None:
    """Only more than one range needs a multipart response."""
    assert not is_multipart((ByteRange(0, 1),))
    assert is_multipart((ByteRange(0, 1), ByteRange(5, 6)))


# --- RFC 9110 §14.1.2 examples -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-499", [(0, 499)]),
        ("bytes=500-999", [(500, 999)]),
        ("bytes=-500", [(9500, 9999)]),
        ("bytes=9500-", [(9500, 9999)]),
        ("bytes=0-0,-1", [(0, 0), (9999, 9999)]),
        ("bytes=500-600,601-999", [(500, 999)]),
        ("bytes=500-700,601-999", [(500, 999)]),
    ],
)
def test_rfc_examples(header: str, expected: list[tuple[int, int]]) -> None:
    """The RFC 9110 §14.1.2 examples on a 10000-byte representation give the RFC's bytes."""
    assert spans(parse_range(header, SIZE)) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-20000", [(0, 9999)]),
        ("bytes=9990-10000", [(9990, 9999)]),
        ("bytes=-20000", [(0, 9999)]),
        ("bytes=-10000", [(0, 9999)]),
        ("bytes=9999-", [(9999, 9999)]),
        ("bytes=0-", [(0, 9999)]),
    ],
)
def test_clamped_to_size(header: str, expected: list[tuple[int, int]]) -> None:
    """A last-pos or suffix beyond the end is clamped to the representation."""
    assert spans(parse_range(header, SIZE)) == expected


def test_unsorted_ranges_are_sorted() -> None:
    """Ranges come back in ascending order whatever order the header lists them in."""
    assert spans(parse_range("bytes=-1,100-199,0-9", SIZE)) == [(0, 9), (100, 199), (9999, 9999)]


def test_many_overlapping_ranges_collapse() -> None:
    """Overlapping and contained specs merge into one range (the overlap amplification guard)."""
    header = "bytes=" + ",".join(f"{i}-{i + 10}" for i in range(MAX_RANGES))
    assert spans(parse_range(header, SIZE)) == [(0, MAX_RANGES - 1 + 10)]


def test_contained_range_keeps_outer_end() -> None:
    """A range inside an earlier one does not shorten the merged range."""
    assert spans(parse_range("bytes=0-100,10-20", SIZE)) == [(0, 100)]


def test_gap_of_one_byte_is_not_merged() -> None:
    """Ranges separated by a single unrequested byte stay separate."""
    assert spans(parse_range("bytes=0-9,11-19", SIZE)) == [(0, 9), (11, 19)]


def test_whitespace_and_empty_elements() -> None:
    """OWS around commas and empty list elements are accepted."""
    assert spans(parse_range(" bytes=0-1 ,\t, 5-6,,\t-1 ", SIZE)) == [(0, 1), (5, 6), (9999, 9999)]


@pytest.mark.parametrize("unit", ["BYTES", "Bytes", "bYtEs"])
def test_unit_is_case_insensitive(unit: str) -> None:
    """The bytes unit matches regardless of case."""
    assert spans(parse_range(f"{unit}=0-1", SIZE)) == [(0, 1)]


# --- unsatisfiable -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["bytes=-0", "bytes=10000-", "bytes=10000-10005", "bytes=20000-30000", "bytes=-0,10000-"],
)
def test_unsatisfiable_raises(header: str) -> None:
    """A valid header none of whose specs selects a byte raises RangeNotSatisfiable."""
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, SIZE)
    assert caught.value.size == SIZE


def test_unsatisfiable_specs_are_dropped() -> None:
    """Unsatisfiable specs are dropped when another spec is satisfiable."""
    assert spans(parse_range("bytes=10000-,-0,5-6,99999-", SIZE)) == [(5, 6)]


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-9"])
def test_zero_size_satisfies_nothing(header: str) -> None:
    """On an empty representation every valid range is unsatisfiable."""
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, 0)
    assert caught.value.size == 0


def test_zero_size_still_ignores_invalid_header() -> None:
    """On an empty representation a malformed header is still ignored rather than refused."""
    assert parse_range("bytes=5-1", 0) is None


# --- ignored headers -------------------------------------------------------------------------


def test_no_header() -> None:
    """Without a Range header the whole representation is served."""
    assert parse_range(None, SIZE) is None


@pytest.mark.parametrize("header", ["items=0-1", "byte=0-1", "bytesx=0-1", "none=0-1"])
def test_unknown_unit_is_ignored(header: str) -> None:
    """A range unit other than bytes is ignored."""
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ",
        "=0-1",
        "bytes =0-1",
        "by tes=0-1",
        "bytes=abc",
        "bytes=-",
        "bytes=500-499",
        "bytes=0-1,5-4",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=--1",
        "bytes=1 -2",
        "bytes=1- 2",
        "bytes=0x10-0x20",
        "bytes=1.0-2",
        "bytes=0-1;2-3",
        "bytes=0-1\n",
        "bytes=0-1\r\n",
        "bytes=\u0661-\u0662",
        "bytes=\uff11-\uff12",
        "bytes=0-\u00b2",
        "bytes=0-1,x",
        "bytès=0-1",
    ],
)
def test_invalid_header_is_ignored(header: str) -> None:
    """A syntactically invalid header (including non-ASCII digits) is ignored wholesale."""
    assert parse_range(header, SIZE) is None


def test_too_many_ranges_is_ignored() -> None:
    """More than max_ranges specs make the whole header ignored."""
    specs = [f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1)]
    assert parse_range("bytes=" + ",".join(specs), SIZE) is None
    result = parse_range("bytes=" + ",".join(specs[:MAX_RANGES]), SIZE)
    assert result is not None
    assert len(result) == MAX_RANGES


def test_too_many_counts_unsatisfiable_specs() -> None:
    """Unsatisfiable specs still count towards the cap."""
    header = "bytes=0-1," + ",".join(["-0"] * MAX_RANGES)
    assert parse_range(header, SIZE) is None


def test_empty_elements_do_not_count() -> None:
    """Empty list elements do not count towards the cap."""
    assert spans(parse_range("bytes=0-1,,,,", SIZE, max_ranges=1)) == [(0, 1)]


def test_custom_cap() -> None:
    """max_ranges overrides the default cap."""
    assert parse_range("bytes=0-1,3-4,6-7", SIZE, max_ranges=2) is None
    assert spans(parse_range("bytes=0-1,3-4", SIZE, max_ranges=2)) == [(0, 1), (3, 4)]


@pytest.mark.parametrize(("size", "cap"), [(-1, MAX_RANGES), (10, 0)])
def test_bad_arguments(size: int, cap: int) -> None:
    """A negative size or a cap below one is a programming error."""
    with pytest.raises(ValueError, match="must"):
        parse_range("bytes=0-1", size, max_ranges=cap)


# --- very long numbers -----------------------------------------------------------------------

HUGE = "9" * 5000


def test_huge_last_pos_clamps() -> None:
    """A last-pos longer than int() accepts is clamped to the end, not an error."""
    assert spans(parse_range(f"bytes=0-{HUGE}", SIZE)) == [(0, 9999)]


def test_huge_suffix_is_whole_file() -> None:
    """A suffix length longer than int() accepts selects the whole representation."""
    assert spans(parse_range(f"bytes=-{HUGE}", SIZE)) == [(0, 9999)]


def test_huge_first_pos_is_unsatisfiable() -> None:
    """A first-pos longer than int() accepts lies past the end."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={HUGE}-", SIZE)


def test_leading_zeros_are_plain_numbers() -> None:
    """Leading zeros, however many, do not change a position's value."""
    zeros = "0" * 5000
    assert spans(parse_range(f"bytes={zeros}12-{zeros}0034", SIZE)) == [(12, 34)]


def test_huge_reversed_range_is_invalid() -> None:
    """b < a is detected even when both exceed int()'s digit limit."""
    assert parse_range(f"bytes=1{'0' * 5000}-{HUGE}", SIZE) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={HUGE}-1{'0' * 5000}", SIZE)


# --- property: agreement with a reference model --------------------------------------------

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")


def reference(header: str | None, size: int, max_ranges: int) -> set[int] | str:
    """Offsets a header selects, or "full" (serve 200) or "unsatisfiable", by brute force."""
    if header is None:
        return "full"
    unit, equals, rest = header.strip(" \t").partition("=")
    if not equals or not unit or not set(unit) <= _TCHAR or unit.lower() != "bytes":
        return "full"
    specs = [element.strip(" \t") for element in rest.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > max_ranges:
        return "full"
    covered: set[int] = set()
    for spec in specs:
        if spec.count("-") != 1:
            return "full"
        first, _, last = spec.partition("-")
        if not set(first + last) <= _DIGITS or not (first or last):
            return "full"
        if not first:
            covered |= set(range(max(0, size - int(last)), size))
        elif last and int(last) < int(first):
            return "full"
        else:
            stop = int(last) + 1 if last else size
            covered |= set(range(int(first), min(stop, size)))
    return covered if covered else "unsatisfiable"


# An explicit alphabet keeps generation fast; it still has non-ASCII digits and controls.
_ANY = string.printable + "\x00\u00e8\u00b2\u0661\uff11\u2028"
# Small positions are favoured so that ranges often touch, overlap or hit the end.
_position = st.one_of(st.integers(min_value=0, max_value=8), st.integers(min_value=0, max_value=40))
_numbers = _position.map(str)
_junk = st.text(alphabet="0123456789-,= \t\n+x;\u0663\uff10bByYtTeEsS", max_size=12)
_ordered_pair = st.tuples(_position, st.integers(0, 10)).map(lambda p: (p[0], p[0] + p[1]))
_valid_spec = st.one_of(
    _ordered_pair.map(lambda p: f"{p[0]}-{p[1]}"),
    _numbers.map(lambda n: f"{n}-"),
    _numbers.map(lambda n: f"-{n}"),
    st.just(""),
)
_any_spec = st.one_of(
    _valid_spec, st.tuples(_numbers, _numbers).map("-".join), st.sampled_from(["-", "--"]), _junk
)
_separator = st.sampled_from([",", ", ", " ,", "\t,\t", ",,", " , , "])
_bytes_unit = st.sampled_from(["bytes", "BYTES", "Bytes", " bytes"])
_any_unit = st.sampled_from(["bytes", "items", "byte", "", "bytes ", "b ytes"])


@st.composite
def headers(draw: st.DrawFn) -> str | None:
    """Range headers mixing valid specs, edge cases and junk, or no header at all."""
    kind = draw(st.sampled_from(["none", "text", "chain", "chain", "valid", "valid", "mixed"]))
    if kind == "none":
        return None
    if kind == "text":
        return draw(st.text(alphabet=_ANY, max_size=20))
    if kind == "chain":
        # Each range starts near the previous end: overlapping, touching or one byte apart.
        position, chain = draw(_position), []
        for _ in range(draw(st.integers(min_value=1, max_value=5))):
            end = position + draw(st.integers(min_value=0, max_value=6))
            chain.append(f"{position}-{end}")
            position = max(0, end + draw(st.integers(min_value=-2, max_value=2)))
        return draw(_bytes_unit) + "=" + ",".join(draw(st.permutations(chain)))
    spec, unit, equals = (_valid_spec, _bytes_unit, st.just("="))
    if kind == "mixed":
        spec, unit, equals = (_any_spec, _any_unit, st.sampled_from(["=", "=", ":", "= "]))
    specs = draw(st.lists(spec, min_size=1, max_size=6))
    text = ""
    for index, item in enumerate(specs):
        text += (draw(_separator) if index else "") + item
    return draw(unit) + draw(equals) + text


@given(
    header=headers(),
    size=_position,
    max_ranges=st.integers(min_value=1, max_value=8),
)
@settings(max_examples=500)
@example(header="bytes=0-1\n", size=10, max_ranges=2)
@example(header="bytes=5-", size=10, max_ranges=2)
@example(header="bytes=-", size=10, max_ranges=2)
@example(header="bytes=-0", size=10, max_ranges=2)
@example(header="bytes=-3", size=0, max_ranges=2)
@example(header="bytes=2-1", size=10, max_ranges=2)
@example(header="bytes=0-1,2-3,4-5", size=10, max_ranges=2)
@example(header="bytes=\u0661-", size=10, max_ranges=2)
@example(header="bytes=-\u0661", size=10, max_ranges=2)
@example(header="bytes=4-5,0-3", size=10, max_ranges=2)
@example(header="bytes=0-3,5-6", size=10, max_ranges=2)
def test_matches_reference_model(header: str | None, size: int, max_ranges: int) -> None:
    """parse_range selects exactly the reference model's bytes as sorted, disjoint, non-adjacent
    ranges, and agrees on when to ignore the header or refuse it."""
    expected = reference(header, size, max_ranges)
    if expected == "unsatisfiable":
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size, max_ranges=max_ranges)
        return
    result = parse_range(header, size, max_ranges=max_ranges)
    if expected == "full":
        assert result is None
        return
    assert result is not None
    got: set[int] = set()
    for r in result:
        assert 0 <= r.start <= r.end < size
        got |= set(range(r.start, r.end + 1))
    assert got == expected
    for before, after in pairwise(result):
        assert before.end + 1 < after.start
