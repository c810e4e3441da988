"""HTTP byte ranges (RFC 9110 §14); by choice, an empty representation satisfies no range at all."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from datadl.domain.errors import RangeNotSatisfiable

__all__ = ["MAX_RANGES", "ByteRange", "is_multipart", "parse_range"]

MAX_RANGES = 16

# Explicit character classes rather than \d or str.isdigit, which accept non-ASCII digits.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SPEC = re.compile(r"(?P<first>[0-9]*)-(?P<last>[0-9]*)")
_OWS = " \t"


@attrs.frozen
class ByteRange:
    """Bytes ``start`` to ``end`` of a representation, both inclusive and 0-based."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        """Number of bytes the range covers."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The Content-Range field value for this range of a representation of ``size`` bytes."""
        if self.end >= size:
            raise ValueError(f"range {self.start}-{self.end} exceeds size {size}")
        return f"bytes {self.start}-{self.end}/{size}"


def _saturating_int(digits: str, ceiling: int) -> int:
    """``int(digits)`` capped at ``ceiling``, without converting very long digit strings."""
    # Python refuses int() on more than 4300 digits, and a header can be longer than that.
    significant = digits.lstrip("0")
    if len(significant) > len(str(ceiling)):
        return ceiling
    return min(int(significant or "0"), ceiling)


def _less_than(left: str, right: str) -> bool:
    """Compare two ASCII digit strings numerically, whatever their length."""
    left, right = left.lstrip("0"), right.lstrip("0")
    return (len(left), left) < (len(right), right)


def parse_range(
    header: str | None, size: int, *, max_ranges: int = MAX_RANGES
) -> tuple[ByteRange, ...] | None:
    """Resolve a Range header against a representation of ``size`` bytes.

    Returns ``None`` when the whole representation should be sent with 200: no header,
    a unit other than ``bytes``, a malformed header, or more than ``max_ranges`` specs.
    Otherwise returns the satisfiable ranges clamped to ``size``, sorted, with
    overlapping and adjacent ones merged. Raises :class:`RangeNotSatisfiable` when the
    header is valid but no spec selects any byte.
    """
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
    if header is None:
        return None

    unit, equals, range_set = header.strip(_OWS).partition("=")
    if not equals or _TOKEN.fullmatch(unit) is None or unit.lower() != "bytes":
        return None

    wanted: list[ByteRange] = []
    count = 0
    for element in range_set.split(","):
        spec = element.strip(_OWS)
        if not spec:
            continue
        count += 1
        # Stop early: a header with thousands of specs is ignored anyway.
        if count > max_ranges:
            return None
        match = _SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match["first"], match["last"]
        if not first:
            if not last:
                return None
            suffix = _saturating_int(last, size)
            if suffix > 0 and size > 0:
                wanted.append(ByteRange(size - suffix, size - 1))
            continue
        if last and _less_than(last, first):
            return None
        start = _saturating_int(first, size)
        if start >= size:
            continue
        end = _saturating_int(last, size - 1) if last else size - 1
        wanted.append(ByteRange(start, end))

    if count == 0:
        return None
    if not wanted:
        raise RangeNotSatisfiable(size)
    return _coalesce(wanted)


def _coalesce(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    # Merging overlaps means many tiny overlapping specs cannot multiply the bytes sent.
    ordered = sorted(ranges, key=lambda r: (r.start, r.end))
    merged = [ordered[0]]
    for current in ordered[1:]:
        previous = merged[-1]
        if current.start <= previous.end + 1:
            if current.end > previous.end:
                merged[-1] = ByteRange(previous.start, current.end)
        else:
            merged.append(current)
    return tuple(merged)


def is_multipart(ranges: Sequence[ByteRange]) -> bool:
    """Whether the ranges need a multipart/byteranges response rather than a single part."""
    return len(ranges) > 1
