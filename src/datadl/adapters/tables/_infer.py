"""Type inference for text cells: the narrowest type that every value of a column fits."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs
import pyarrow as pa
import pyarrow.compute as pc

#: Cell spellings read as a missing value in csv, tsv and xlsx.
NULL_SPELLINGS = ("", "NA", "N/A", "null", "NaN", "-")

#: Date layouts recognised besides ISO 8601, tried in this order when several fit.
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y")

_INT_RE = r"^-?[0-9]+$"
_FLOAT_RE = (
    r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$|^(?i:[+-]?(?:inf|infinity|nan))$"
)
_TIME = r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
_TS_RE = rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}(?:[T ]{_TIME})?$"
_TSTZ_RE = rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[T ]{_TIME}(?:Z|[+-][0-9]{{2}}(?::?[0-9]{{2}})?)$"
_MAX_DECIMAL_DIGITS = 38
_BOOLEANS = pa.array(["true", "false"])
#: Values tried first: a failing cast costs a pass over the whole batch.
_PROBE = 64
#: A kind stops being tracked once fewer than this share of the values fit it.
_DOMINANT = 0.5
_EXAMPLE_CHARS = 40


class Kind(enum.Enum):
    """A typed reading of text cells, narrowest first."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMP_TZ = "timestamp with time zone"


ALL_KINDS = tuple(Kind)
TEMPORAL_KINDS = (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMP_TZ)


@attrs.frozen
class Finding:
    """A consistency finding made while inferring a column's type."""

    column: str
    kind: str
    affected_rows: int
    message: str


@attrs.frozen
class ColumnPlan:
    """How one column's text turns into typed values."""

    name: str
    kind: Kind | None
    arrow_type: pa.DataType
    date_formats: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()

    def convert(self, values: pa.Array) -> pa.Array:
        """Turn a string array of this column into its typed array (nulls stay nulls)."""
        if self.kind is None:
            return values
        if self._strict:
            # A cast refuses any surrounding white space, so one that succeeds on the raw
            # text gives what it would give on the trimmed text: trim only on failure.
            try:
                return pc.cast(values, self.arrow_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        trimmed = pc.utf8_trim_whitespace(values)
        return _convert(trimmed, self.kind, self.arrow_type, self.date_formats)

    @property
    def _strict(self) -> bool:
        # Booleans and non-ISO dates read unknown spellings as null rather than failing.
        return self.kind is not Kind.BOOLEAN and (
            self.kind is not Kind.DATE or tuple(self.date_formats) == (DATE_FORMATS[0],)
        )

    def reads_like(self, other: ColumnPlan) -> bool:
        """Whether this plan turns any text into the same values as ``other`` does."""
        return (
            self.kind is other.kind
            and self.arrow_type == other.arrow_type
            and self.date_formats == other.date_formats
        )

    def fits(self, cell: str | None) -> bool:
        """Whether one raw cell reads as this column's type (a header check)."""
        if cell is None or self.kind is None:
            return True
        try:
            converted = self.convert(pa.array([cell], pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return bool(converted.null_count == 0)


def _convert(
    trimmed: pa.Array, kind: Kind, arrow_type: pa.DataType, formats: Sequence[str]
) -> pa.Array:
    if kind is Kind.BOOLEAN:
        lowered = pc.utf8_lower(trimmed)
        known = pc.is_in(lowered, value_set=pa.array(["true", "false"]))
        return pc.if_else(known, pc.equal(lowered, "true"), pa.scalar(None, pa.bool_()))
    if kind is Kind.DATE:
        if tuple(formats) == (DATE_FORMATS[0],):
            return pc.cast(trimmed, pa.date32())
        parsed = [pc.strptime(trimmed, format=f, unit="s", error_is_null=True) for f in formats]
        merged = pc.coalesce(*parsed) if len(parsed) > 1 else parsed[0]
        return pc.cast(merged, pa.date32())
    return pc.cast(trimmed, arrow_type)


def _castable(values: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _count_failures(values: pa.Array, target: pa.DataType) -> int:
    # Bisect: a cast fails as a whole, so halving finds the few bad cells cheaply.
    if len(values) == 0 or _castable(values, target):
        return 0
    if len(values) == 1:
        return 1
    half = len(values) // 2
    return _count_failures(values.slice(0, half), target) + _count_failures(
        values.slice(half), target
    )


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _regex_fits(values: pa.Array, pattern: str, target: pa.DataType) -> tuple[int, pa.Array]:
    """How many values fit ``pattern`` and also cast; and the mask of the pattern."""
    mask = pc.match_substring_regex(values, pattern)
    shaped = values.filter(mask)
    return len(shaped) - _count_failures(shaped, target), mask


class _Trimmed:
    """A batch of raw text and, computed once when first asked for, its trimmed text."""

    def __init__(self, raw: pa.Array) -> None:
        self.raw = raw
        self._trimmed: pa.Array | None = None

    def trimmed(self) -> pa.Array:
        if self._trimmed is None:
            self._trimmed = pc.utf8_trim_whitespace(self.raw)
        return self._trimmed


class ColumnGuess:
    """Incremental evidence about one text column, batch after batch.

    A kind stays the column's candidate while every value fits it; a cheap cast decides
    that (tried first on a small probe, because a failing cast scans the whole batch).
    Kinds that have failed are still counted exactly while they fit at least half of the
    values, so that a mismatch can be reported with its number of rows.
    """

    def __init__(self, name: str, kinds: Sequence[Kind] = ALL_KINDS) -> None:
        self.name = name
        self.count = 0
        self._alive = set(kinds)
        self._fits: dict[Kind, int] = dict.fromkeys(kinds, 0)
        self._examples: dict[Kind, str] = {}
        self._int_overflow = False
        self._ts_unit = "us"
        self._tstz_unit = "us"
        self._date_fits: dict[str, int] = dict.fromkeys(DATE_FORMATS, 0)
        self._ts_date_only = 0

    def observe(self, values: pa.Array) -> None:
        """Take one batch of raw string cells (nulls already applied)."""
        present = values.drop_null() if values.null_count else values
        n = len(present)
        if n == 0:
            return
        first = self.count == 0
        self.count += n
        if not self._fits:
            # No kind is left to count: the column is text, whatever this batch holds.
            return
        trimmed = _Trimmed(present)
        # Every integer reads as a float and every ISO date as a timestamp: a batch that
        # fits the narrower kind needs no check of the wider one.
        settled: set[Kind] = set()
        for kind in list(self._fits):
            if kind in settled and kind in self._alive:
                # Implied by a narrower kind that every value of this batch fits.
                self._fits[kind] += n
                if kind is Kind.TIMESTAMP:
                    self._ts_date_only += n
                continue
            iso_dates = self._date_fits[DATE_FORMATS[0]]
            fit = self._fit_count(kind, trimmed, first=first)
            self._fits[kind] += fit
            if kind is Kind.INTEGER and fit == n:
                settled.add(Kind.FLOAT)
            if kind is Kind.DATE and self._date_fits[DATE_FORMATS[0]] - iso_dates == n:
                settled.add(Kind.TIMESTAMP)
            # A kind that no longer holds half the values can be neither the type nor the
            # explanation of a mismatch; stop paying for it.
            if kind not in self._alive and self._fits[kind] < _DOMINANT * self.count:
                del self._fits[kind]

    def _fit_count(self, kind: Kind, text: _Trimmed, *, first: bool) -> int:
        n = len(text.raw)
        if kind in self._alive and self._all_fit_strictly(kind, text.raw):
            # Every raw value fits, so none has white space around it: raw is trimmed.
            return self._fit_all(kind, text.raw)
        values = text.trimmed()
        probe = values.slice(0, _PROBE)
        if kind in self._alive:
            if self._all_fit(kind, probe) and self._all_fit(kind, values):
                return self._fit_all(kind, values)
            if kind is Kind.DATE and self._exact_fit(kind, probe, record=False) == len(probe):
                # Dates in layouts other than ISO: count each layout over the whole batch.
                fit = self._exact_fit(kind, values, record=True)
                if fit < n:
                    self._alive.discard(kind)
                return fit
            self._alive.discard(kind)
        if (
            first
            and len(probe) < n
            and self._exact_fit(kind, probe, record=False) < (_DOMINANT * len(probe))
        ):
            # The first values already show this kind cannot explain most of the column.
            return 0
        return self._exact_fit(kind, values, record=True)

    def _fit_all(self, kind: Kind, values: pa.Array) -> int:
        # Every one of the (trimmed) values fits ``kind``.
        if kind is Kind.DATE:
            self._date_fits[DATE_FORMATS[0]] += len(values)
        if kind is Kind.TIMESTAMP:
            # Values that parse as timestamps are date-only exactly when 10 long.
            self._ts_date_only += _count(pc.equal(pc.utf8_length(values), 10))
        return len(values)

    def _all_fit_strictly(self, kind: Kind, raw: pa.Array) -> bool:
        # The casts behind ``_all_fit`` refuse surrounding white space (booleans do not).
        if kind is Kind.BOOLEAN:
            return False
        return self._all_fit(kind, raw.slice(0, _PROBE)) and self._all_fit(kind, raw)

    def _all_fit(self, kind: Kind, values: pa.Array) -> bool:
        if kind is Kind.BOOLEAN:
            return _count(pc.is_in(pc.utf8_lower(values), value_set=_BOOLEANS)) == len(values)
        if kind is Kind.INTEGER:
            if _castable(values, pa.int64()):
                return True
            digits = _count(pc.match_substring_regex(values, _INT_RE)) == len(values)
            if digits and pc.max(pc.utf8_length(values)).as_py() <= _MAX_DECIMAL_DIGITS:
                # Too big for 64 bits: a decimal of scale 0 keeps every digit.
                self._int_overflow = True
                return True
            return False
        if kind is Kind.FLOAT:
            return _castable(values, pa.float64())
        if kind is Kind.DATE:
            return _castable(values, pa.date32())
        tz = kind is Kind.TIMESTAMP_TZ
        zone = "UTC" if tz else None
        unit = self._tstz_unit if tz else self._ts_unit
        if _castable(values, pa.timestamp(unit, zone)):
            return True
        if unit == "us" and _castable(values, pa.timestamp("ns", zone)):
            # Nanosecond digits: keep them rather than reject the column.
            if tz:
                self._tstz_unit = "ns"
            else:
                self._ts_unit = "ns"
            return True
        return False

    def _exact_fit(self, kind: Kind, values: pa.Array, *, record: bool) -> int:
        if kind is Kind.BOOLEAN:
            mask = pc.is_in(pc.utf8_lower(values), value_set=_BOOLEANS)
            fit = _count(mask)
        elif kind is Kind.INTEGER:
            mask = pc.match_substring_regex(values, _INT_RE)
            fit = _count(mask)
        elif kind is Kind.FLOAT:
            fit, mask = _regex_fits(values, _FLOAT_RE, pa.float64())
        elif kind is Kind.DATE:
            fit, mask = self._date_fit(values, record=record)
        else:
            tz = kind is Kind.TIMESTAMP_TZ
            unit = self._tstz_unit if tz else self._ts_unit
            target = pa.timestamp(unit, "UTC" if tz else None)
            fit, mask = _regex_fits(values, _TSTZ_RE if tz else _TS_RE, target)
        if record and fit < len(values) and kind not in self._examples:
            misfits = values.filter(pc.invert(pc.fill_null(mask, False)))
            if len(misfits):
                self._examples[kind] = str(misfits[0].as_py())[:_EXAMPLE_CHARS]
        return fit

    def _date_fit(self, values: pa.Array, *, record: bool) -> tuple[int, pa.Array]:
        any_mask = None
        for fmt in DATE_FORMATS:
            parsed = pc.strptime(values, format=fmt, unit="s", error_is_null=True)
            if fmt == DATE_FORMATS[0]:
                # strptime forgives 2020-02-30; only a value that prints back unchanged is a date.
                mask = pc.fill_null(pc.equal(pc.strftime(parsed, format=fmt), values), False)
            else:
                mask = pc.is_valid(parsed)
            if record:
                self._date_fits[fmt] += _count(mask)
            any_mask = mask if any_mask is None else pc.or_(any_mask, mask)
        return _count(any_mask), any_mask

    def plan(self, name: str | None = None) -> ColumnPlan:
        """The column's type: the narrowest kind every value fits, else text."""
        name = name or self.name
        if self.count == 0:
            return ColumnPlan(name, None, pa.string())
        for kind in self._fits:
            if kind in self._alive:
                return self._typed_plan(name, kind)
        findings: tuple[Finding, ...] = ()
        if self._fits:
            best = max(self._fits, key=lambda k: self._fits[k])
            misfits = self.count - self._fits[best]
            example = self._examples.get(best)
            message = (
                f"{misfits} of {self.count} values in column {name!r} are not {best.value}"
                + (f" (for example {example!r})" if example is not None else "")
                + "; the column is read as text."
            )
            findings = (Finding(name, "type_mismatch", misfits, message),)
        return ColumnPlan(name, None, pa.string(), findings=findings)

    def _typed_plan(self, name: str, kind: Kind) -> ColumnPlan:
        if kind is Kind.BOOLEAN:
            return ColumnPlan(name, kind, pa.bool_())
        if kind is Kind.INTEGER:
            if self._int_overflow:
                return ColumnPlan(name, kind, pa.decimal128(_MAX_DECIMAL_DIGITS, 0))
            return ColumnPlan(name, kind, pa.int64())
        if kind is Kind.FLOAT:
            return ColumnPlan(name, kind, pa.float64())
        if kind is Kind.DATE:
            used = sorted(
                (f for f in DATE_FORMATS if self._date_fits[f]),
                key=lambda f: (-self._date_fits[f], DATE_FORMATS.index(f)),
            )
            findings: tuple[Finding, ...] = ()
            if self._date_fits[used[0]] < self.count:
                misfits = self.count - self._date_fits[used[0]]
                findings = (
                    Finding(
                        name,
                        "mixed_date_formats",
                        misfits,
                        f"{misfits} of {self.count} dates in column {name!r} are not written "
                        f"as {used[0]}, the column's most common layout.",
                    ),
                )
            else:
                used = used[:1]
            return ColumnPlan(name, kind, pa.date32(), tuple(used), findings)
        if kind is Kind.TIMESTAMP:
            findings = ()
            if 0 < self._ts_date_only < self.count:
                misfits = min(self._ts_date_only, self.count - self._ts_date_only)
                findings = (
                    Finding(
                        name,
                        "mixed_date_formats",
                        misfits,
                        f"Column {name!r} mixes dates with and without a time of day; "
                        f"{misfits} values follow the less common layout.",
                    ),
                )
            return ColumnPlan(name, kind, pa.timestamp(self._ts_unit), findings=findings)
        return ColumnPlan(name, kind, pa.timestamp(self._tstz_unit, "UTC"))
