"""Column statistics over record batches in bounded memory: exact where cheap, sketches beyond.

Per column, values are counted exactly (a table of value → count, merged with pyarrow's
group-by) until a column has more than ``exact_distinct`` different values. From then on the
column switches to estimates, each reported with ``"exact": false`` and an error bound:

- distinct values: a HyperLogLog of 2**14 registers over 64-bit value hashes (relative
  standard error 1.04/sqrt(2**14) ≈ 0.81%). It is written here with numpy because the
  DataSketches HLL only takes one value per Python call, which is far too slow per row.
- quantiles, histogram and Tukey outliers: a DataSketches KLL sketch (k=200), fed whole
  numpy arrays, whose normalised rank error is reported.
- top values: a bounded heavy-hitter summary; counts are lower bounds, and each may be short
  by at most the reported absolute ``error_bound``.

Counts, nulls, min, max, mean, standard deviation (sample, ddof=1), string lengths and
true/false counts are always exact. Floating statistics are over finite values; NaN and
infinities are counted apart. Duplicate rows are counted exactly from 64-bit row hashes,
kept in memory up to ``exact_rows`` rows and beyond that spilled to temporary files by hash
prefix, so that memory stays bounded; two different rows share a hash with probability
below n²/2**65.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import datasketches
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datadl.adapters.tables._render import float_value, logical_type, render_array, render_scalar

QUANTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
HISTOGRAM_BINS = 20
TOP_VALUES = 10
TUKEY_K = 1.5
_HLL_BITS = 14
_HLL_RSE = 1.04 / math.sqrt(1 << _HLL_BITS)
_KLL_K = 200
_HEAVY_KEEP = 4096
_HEAVY_PER_BATCH = 1024
_SPILL_BITS = 6
_SPILL_PARTS = 1 << _SPILL_BITS

Hasher = Callable[[pa.Array], np.ndarray]


def _mix(h: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: well-spread bits whatever the source hash was.
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = h ^ (h >> np.uint64(31))
    return mixed


class Hll:
    """A HyperLogLog distinct counter over 64-bit hashes, updated with whole arrays."""

    def __init__(self, bits: int = _HLL_BITS) -> None:
        self._bits = bits
        self.registers = np.zeros(1 << bits, dtype=np.uint8)

    def add(self, hashes: np.ndarray) -> None:
        """Count the values behind ``hashes`` (uint64)."""
        if len(hashes) == 0:
            return
        h = _mix(hashes.astype(np.uint64, copy=False))
        width = 64 - self._bits
        index = (h >> np.uint64(width)).astype(np.intp)
        rest = h & np.uint64((1 << width) - 1)
        # The 1-based position of the leftmost set bit of ``rest``: exact through frexp,
        # since ``rest`` < 2**53 converts to float without rounding.
        _, exponent = np.frexp(rest.astype(np.float64))
        rank = np.where(rest == 0, width + 1, width - exponent + 1).astype(np.uint8)
        np.maximum.at(self.registers, index, rank)

    def estimate(self) -> float:
        """The estimated number of distinct values seen."""
        m = float(len(self.registers))
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int64))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if raw <= 2.5 * m and zeros:
            return m * math.log(m / zeros)
        return raw


def exact(value: Any) -> dict[str, Any]:
    """A statistic known exactly."""
    return {"value": value, "exact": True}


def estimated(value: Any, error_bound: float, error_kind: str) -> dict[str, Any]:
    """A statistic known within ``error_bound`` (of the kind ``error_kind`` names)."""
    return {"value": value, "exact": False, "error_bound": error_bound, "error_kind": error_kind}


def _value_counts(values: pa.Array) -> pa.Table:
    counted = pc.value_counts(values)
    return pa.table({"value": counted.field("values"), "count": counted.field("counts")})


def _merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    # Sort and add up runs of equal values. pyarrow's group-by hashes float keys (and
    # integers with many trailing zero bits) so badly that it turns quadratic.
    merged = pa.concat_tables(tables).combine_chunks()
    values = merged.column("value").combine_chunks()
    counts = merged.column("count").combine_chunks()
    if len(values) == 0:
        return merged
    key = values
    if pa.types.is_floating(values.type):
        # Compare bit patterns: -0.0 and 0.0 stay apart, as in pyarrow's value counts.
        key = values.view({64: pa.int64(), 32: pa.int32(), 16: pa.int16()}[values.type.bit_width])
    order = pc.sort_indices(key)
    key = key.take(order)
    change = pc.not_equal(key.slice(1), key.slice(0, len(key) - 1))
    starts = np.flatnonzero(np.concatenate([[True], change.to_numpy(zero_copy_only=False)]))
    totals = np.add.reduceat(counts.take(order).to_numpy(), starts)
    return pa.table({"value": values.take(order).take(starts), "count": pa.array(totals)})


def _top(table: pa.Table, k: int) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
    return table.take(order.slice(0, k))


def _largest(table: pa.Table, k: int) -> pa.Table:
    # Selection, not a sort: the summary only needs the k largest counts, ties in any order.
    order = pc.select_k_unstable(table, k=k, sort_keys=[("count", "descending")])
    return table.take(order)


class ValueCounter:
    """Counts of each distinct value: exact up to a cap, then an estimated summary."""

    def __init__(self, cap: int, hasher: Hasher) -> None:
        self._cap = cap
        self._hasher = hasher
        self._parts: list[pa.Table] = []
        self._pending = 0
        self.table: pa.Table | None = None
        self.overflow = False
        self._hll = Hll()
        self._error = 0

    def add(self, values: pa.Array, hashes: np.ndarray | None = None) -> None:
        """Count non-null ``values`` (whose 64-bit hashes may come along, aligned)."""
        if len(values) == 0:
            return
        counts = _value_counts(values)
        if self.overflow:
            self._hll.add(self._hasher(values) if hashes is None else hashes)
            if counts.num_rows > _HEAVY_PER_BATCH:
                top = _largest(counts, _HEAVY_PER_BATCH)
                # A value left out of this batch's top occurs here at most this often.
                self._error += int(pc.min(top.column("count")).as_py())
                counts = top
            self._absorb_heavy(counts)
            return
        self._parts.append(counts)
        self._pending += counts.num_rows
        if self._pending > self._cap:
            self._compact()

    def _compact(self) -> None:
        parts = ([self.table] if self.table is not None else []) + self._parts
        self._parts = []
        if not parts:
            return
        merged = _merge_counts(parts)
        if merged.num_rows <= self._cap:
            self.table = merged
            self._pending = merged.num_rows
            return
        self.overflow = True
        self._hll.add(self._hasher(merged.column("value").combine_chunks()))
        self.table = None
        self._absorb_heavy(merged)

    def _absorb_heavy(self, counts: pa.Table) -> None:
        merged = _merge_counts([counts] if self.table is None else [self.table, counts])
        if merged.num_rows > _HEAVY_KEEP:
            kept = _largest(merged, _HEAVY_KEEP)
            # Whatever is dropped counted at most as much as the smallest count kept.
            self._error += int(pc.min(kept.column("count")).as_py())
            merged = kept
        self.table = merged

    def finish(self) -> None:
        """Fold the pending counts in."""
        if not self.overflow:
            self._compact()

    def distinct(self) -> dict[str, Any]:
        """The number of distinct values, exact or estimated."""
        if not self.overflow:
            return exact(0 if self.table is None else self.table.num_rows)
        return estimated(round(self._hll.estimate()), _HLL_RSE, "relative_standard_error")

    def top(self) -> dict[str, Any]:
        """The most frequent values with their counts."""
        if self.table is None or self.table.num_rows == 0:
            return exact([])
        top = _top(self.table, TOP_VALUES)
        rendered = [
            {"value": v, "count": c}
            for v, c in zip(
                render_array(top.column("value")), top.column("count").to_pylist(), strict=True
            )
        ]
        if self.overflow:
            return estimated(rendered, self._error, "absolute_count")
        return exact(rendered)


class _Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, values: pa.Array) -> None:
        n = len(values)
        if n == 0:
            return
        mean = pc.mean(values).as_py()
        m2 = pc.variance(values, ddof=0).as_py() * n
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def std(self) -> float | None:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else None


@attrs.define
class Outliers:
    """Values outside a numeric column's Tukey fences."""

    count: int
    lower: float
    upper: float
    exact: bool


class ColumnStats:
    """Statistics every column has: count and nulls."""

    def __init__(self, name: str, arrow_type: pa.DataType) -> None:
        self.name = name
        self.type = arrow_type
        self.count = 0
        self.nulls = 0
        self.outliers: Outliers | None = None
        self.counter: ValueCounter | None = None
        self.empty_strings = 0
        self.blank_strings = 0

    def observe(self, values: pa.Array, hashes: np.ndarray | None = None) -> None:
        """Take one batch of the column, with its values' 64-bit hashes if known."""
        self.nulls += values.null_count
        present = values
        if values.null_count:
            present = values.drop_null()
            if hashes is not None:
                hashes = hashes[values.is_valid().to_numpy(zero_copy_only=False)]
        self.count += len(present)
        self._observe(present, hashes)

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        pass

    def finish(self, rows: int) -> dict[str, Any]:
        """The column's statistics as plain JSON-able values."""
        stats: dict[str, Any] = {
            "type": logical_type(self.type),
            "count": self.count,
            "nulls": self.nulls,
            "null_fraction": self.nulls / rows if rows else 0.0,
        }
        if self.counter is not None:
            self.counter.finish()
            distinct = self.counter.distinct()
            stats["distinct"] = distinct
            stats["top_values"] = self.counter.top()
            stats["unique"] = bool(
                distinct["exact"] and self.count > 0 and distinct["value"] == self.count
            )
        stats.update(self._finish())
        return stats

    def _finish(self) -> dict[str, Any]:
        return {}


class _Counted(ColumnStats):
    def __init__(self, name: str, arrow_type: pa.DataType, cap: int, hasher: Hasher) -> None:
        super().__init__(name, arrow_type)
        self.counter = ValueCounter(cap, hasher)
        self._min: pa.Scalar | None = None
        self._max: pa.Scalar | None = None

    def _track_range(self, present: pa.Array) -> None:
        if len(present) == 0:
            return
        found = pc.min_max(present)
        lows = [found["min"]] + ([self._min] if self._min is not None else [])
        highs = [found["max"]] + ([self._max] if self._max is not None else [])
        self._min = pc.min(pa.array(lows, type=present.type))
        self._max = pc.max(pa.array(highs, type=present.type))

    def _range(self) -> dict[str, Any]:
        if self._min is None or self._max is None:
            return {"min": None, "max": None}
        return {"min": render_scalar(self._min), "max": render_scalar(self._max)}


class NumericStats(_Counted):
    """Integers, floats and decimals: moments, quantiles, histogram and outliers."""

    def __init__(self, name: str, arrow_type: pa.DataType, cap: int, hasher: Hasher) -> None:
        super().__init__(name, arrow_type, cap, hasher)
        self._floating = pa.types.is_floating(arrow_type)
        self._integral = pa.types.is_integer(arrow_type) or (
            pa.types.is_decimal(arrow_type) and arrow_type.scale == 0
        )
        self.nan = 0
        self.infinite = 0
        self._moments = _Moments()
        self._kll = datasketches.kll_doubles_sketch(_KLL_K)

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        finite = present
        if self._floating and len(present):
            nan = pc.is_nan(present)
            self.nan += pc.sum(nan).as_py() or 0
            finite_mask = pc.is_finite(present)
            kept = pc.sum(finite_mask).as_py() or 0
            self.infinite += len(present) - kept - (pc.sum(nan).as_py() or 0)
            if kept < len(present):
                finite = present.filter(finite_mask)
                if hashes is not None:
                    hashes = hashes[finite_mask.to_numpy(zero_copy_only=False)]
        if len(finite) == 0:
            return
        self._track_range(finite)
        as_float = pc.cast(finite, pa.float64(), safe=False)
        self._moments.add(as_float)
        # The sketch binding wants a writable array; arrow hands out read-only views.
        self._kll.update(np.array(as_float.to_numpy(zero_copy_only=False), dtype=np.float64))
        assert self.counter is not None
        self.counter.add(finite, hashes)

    def _finish(self) -> dict[str, Any]:
        out: dict[str, Any] = self._range()
        if self._floating:
            out["nan"] = self.nan
            out["infinite"] = self.infinite
        out["mean"] = float_value(self._moments.mean) if self._moments.n else None
        std = self._moments.std()
        out["std"] = float_value(std) if std is not None else None
        if self._moments.n == 0:
            out["quantiles"] = None
            out["histogram"] = None
            return out
        assert self.counter is not None
        table = self.counter.table
        if not self.counter.overflow and table is not None:
            values = pc.cast(table.column("value"), pa.float64(), safe=False).to_numpy()
            counts = table.column("count").to_numpy()
            order = np.argsort(values, kind="stable")
            values, counts = values[order], counts[order]
            quantiles = _exact_quantiles(values, counts)
            out["quantiles"] = exact(quantiles)
            out["histogram"] = _exact_histogram(values, counts, self._integral)
            self.outliers = _exact_outliers(values, counts, quantiles)
        else:
            out["quantiles"] = estimated(
                dict(
                    zip(QUANTILES, self._kll.get_quantiles(list(QUANTILES.values())), strict=True)
                ),
                self._kll.normalized_rank_error(False),
                "normalized_rank_error",
            )
            out["histogram"] = self._sketched_histogram()
            self.outliers = self._sketched_outliers(out["quantiles"]["value"])
        if self.outliers is not None:
            out["outliers"] = {
                "count": self.outliers.count,
                "lower_fence": self.outliers.lower,
                "upper_fence": self.outliers.upper,
                "exact": self.outliers.exact,
            }
        return out

    def _bounds(self) -> tuple[float, float] | None:
        if self._min is None or self._max is None:
            return None
        low, high = float(self._min.as_py()), float(self._max.as_py())
        if not math.isfinite(high - low):
            return None
        return low, high

    def _sketched_histogram(self) -> dict[str, Any] | None:
        bounds = self._bounds()
        if bounds is None:
            return None
        n = self._kll.n
        if bounds[0] == bounds[1]:
            value = {"edges": [bounds[0], bounds[1]], "counts": [n]}
        else:
            bins = _bin_count(bounds, self._integral)
            try:
                edges = np.histogram_bin_edges([], bins=bins, range=bounds)
            except ValueError:
                edges = np.array(bounds)
            masses = self._kll.get_pmf(list(edges[1:-1])) if len(edges) > 2 else [1.0]
            value = {"edges": edges.tolist(), "counts": [round(mass * n) for mass in masses]}
        return estimated(value, self._kll.normalized_rank_error(True), "normalized_rank_error")

    def _sketched_outliers(self, quantiles: dict[str, float]) -> Outliers | None:
        lower, upper = _fences(quantiles)
        if lower is None or upper is None:
            return None
        n = self._kll.n
        below = self._kll.get_cdf([lower], False)[0]
        at_or_below = self._kll.get_cdf([upper], True)[0]
        count = round((below + (1.0 - at_or_below)) * n)
        return Outliers(count, lower, upper, exact=False)


def _bin_count(bounds: tuple[float, float], integral: bool) -> int:
    low, high = bounds
    if integral:
        return max(1, min(HISTOGRAM_BINS, int(high - low) + 1))
    return HISTOGRAM_BINS


def _exact_quantiles(values: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    # Linear interpolation between the two closest ranks, as numpy and pyarrow define it.
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    out: dict[str, float] = {}
    for name, q in QUANTILES.items():
        position = q * (total - 1)
        low, high = math.floor(position), math.ceil(position)
        v_low = values[np.searchsorted(cumulative, low, side="right")]
        v_high = values[np.searchsorted(cumulative, high, side="right")]
        out[name] = float(v_low + (v_high - v_low) * (position - low))
    return out


def _exact_histogram(values: np.ndarray, counts: np.ndarray, integral: bool) -> dict[str, Any]:
    bounds = (float(values[0]), float(values[-1]))
    if not math.isfinite(bounds[1] - bounds[0]):
        return exact(None)
    return exact(histogram(values, counts, bounds, _bin_count(bounds, integral)))


def histogram(
    values: np.ndarray, counts: np.ndarray, bounds: tuple[float, float], bins: int
) -> dict[str, Any]:
    """Equal-width bins over ``bounds`` (the last one closed), as numpy counts them.

    One bin holds everything when the range is a single value or too narrow, at its
    magnitude, to split into distinct float edges.
    """
    total = int(counts.sum())
    if bounds[0] == bounds[1]:
        return {"edges": [bounds[0], bounds[1]], "counts": [total]}
    try:
        hist, edges = np.histogram(values, bins=bins, range=bounds, weights=counts)
    except ValueError:
        return {"edges": [bounds[0], bounds[1]], "counts": [total]}
    return {"edges": edges.tolist(), "counts": [round(float(c)) for c in hist]}


def _fences(quantiles: dict[str, float]) -> tuple[float | None, float | None]:
    q1, q3 = quantiles["p25"], quantiles["p75"]
    iqr = q3 - q1
    if not math.isfinite(iqr) or iqr <= 0:
        # A column whose middle half is one value would call every other value an outlier.
        return None, None
    return q1 - TUKEY_K * iqr, q3 + TUKEY_K * iqr


def _exact_outliers(
    values: np.ndarray, counts: np.ndarray, quantiles: dict[str, float]
) -> Outliers | None:
    lower, upper = _fences(quantiles)
    if lower is None or upper is None:
        return None
    outside = (values < lower) | (values > upper)
    return Outliers(int(counts[outside].sum()), lower, upper, exact=True)


class StringStats(_Counted):
    """Text: lengths, empty and blank strings, top values, case and spacing variants."""

    def __init__(self, name: str, arrow_type: pa.DataType, cap: int, hasher: Hasher) -> None:
        super().__init__(name, arrow_type, cap, hasher)
        self._len_min: int | None = None
        self._len_max: int | None = None
        self._len_sum = 0

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        if len(present) == 0:
            return
        lengths = pc.utf8_length(present)
        found = pc.min_max(lengths)
        low, high = found["min"].as_py(), found["max"].as_py()
        self._len_min = low if self._len_min is None else min(self._len_min, low)
        self._len_max = high if self._len_max is None else max(self._len_max, high)
        self._len_sum += pc.sum(lengths).as_py() or 0
        empty = pc.equal(lengths, 0)
        self.empty_strings += pc.sum(empty).as_py() or 0
        trimmed_empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(present)), 0)
        self.blank_strings += pc.sum(pc.and_(trimmed_empty, pc.invert(empty))).as_py() or 0
        self._track_range(present)
        assert self.counter is not None
        self.counter.add(present, hashes)

    def _finish(self) -> dict[str, Any]:
        out = self._range()
        out["string_length"] = {
            "min": self._len_min,
            "mean": self._len_sum / self.count if self.count else None,
            "max": self._len_max,
        }
        out["empty_strings"] = self.empty_strings
        out["blank_strings"] = self.blank_strings
        return out

    def variants(self) -> tuple[int, list[str]] | None:
        """Rows whose spelling differs only in case or surrounding spaces from a commoner one.

        Returns the number of such rows and one example group, or None when the exact value
        counts are not available (too many distinct values).
        """
        if self.counter is None or self.counter.overflow or self.counter.table is None:
            return None
        table = self.counter.table
        key = pc.utf8_lower(pc.utf8_trim_whitespace(table.column("value")))
        keyed = pa.table(
            {"key": key, "value": table.column("value"), "count": table.column("count")}
        )
        keyed = keyed.filter(pc.not_equal(keyed.column("key"), ""))
        grouped = keyed.group_by("key").aggregate(
            [("count", "sum"), ("count", "max"), ("value", "count")]
        )
        grouped = grouped.filter(pc.greater(grouped.column("value_count"), 1))
        if grouped.num_rows == 0:
            return 0, []
        affected = pc.sum(pc.subtract(grouped.column("count_sum"), grouped.column("count_max")))
        first_key = grouped.column("key")[0].as_py()
        example = keyed.filter(pc.equal(keyed.column("key"), first_key))
        example = example.take(
            pc.sort_indices(example, [("count", "descending"), ("value", "ascending")])
        )
        return int(affected.as_py()), [str(v) for v in example.column("value").to_pylist()]


class BooleanStats(ColumnStats):
    """True and false counts."""

    def __init__(self, name: str, arrow_type: pa.DataType) -> None:
        super().__init__(name, arrow_type)
        self.true = 0

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        self.true += pc.sum(present).as_py() or 0

    def _finish(self) -> dict[str, Any]:
        false = self.count - self.true
        return {
            "true_count": self.true,
            "false_count": false,
            "distinct": exact(int(self.true > 0) + int(false > 0)),
        }


class TemporalStats(_Counted):
    """Dates, times and timestamps: their range, distinct and most frequent values."""

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        self._track_range(present)
        assert self.counter is not None
        self.counter.add(present, hashes)

    def _finish(self) -> dict[str, Any]:
        out = self._range()
        if pa.types.is_timestamp(self.type):
            out["timezone"] = self.type.tz
        return out


class BinaryStats(_Counted):
    """Binary values: byte lengths, distinct and most frequent values."""

    def __init__(self, name: str, arrow_type: pa.DataType, cap: int, hasher: Hasher) -> None:
        super().__init__(name, arrow_type, cap, hasher)
        self._lengths = _Lengths()

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        self._lengths.add(pc.binary_length(present))
        assert self.counter is not None
        self.counter.add(present, hashes)

    def _finish(self) -> dict[str, Any]:
        return {"byte_length": self._lengths.result(self.count)}


class NestedStats(ColumnStats):
    """Lists, structs and maps: counts, and element counts for lists."""

    def __init__(self, name: str, arrow_type: pa.DataType) -> None:
        super().__init__(name, arrow_type)
        self._lengths = _Lengths() if logical_type(arrow_type) in ("list", "map") else None

    def _observe(self, present: pa.Array, hashes: np.ndarray | None) -> None:
        if self._lengths is not None:
            self._lengths.add(pc.list_value_length(present))

    def _finish(self) -> dict[str, Any]:
        if self._lengths is None:
            return {}
        return {"list_length": self._lengths.result(self.count)}


class _Lengths:
    def __init__(self) -> None:
        self.low: int | None = None
        self.high: int | None = None
        self.total = 0

    def add(self, lengths: pa.Array) -> None:
        if len(lengths) == 0:
            return
        found = pc.min_max(lengths)
        low, high = found["min"].as_py(), found["max"].as_py()
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        self.total += pc.sum(lengths).as_py() or 0

    def result(self, count: int) -> dict[str, Any]:
        return {"min": self.low, "mean": self.total / count if count else None, "max": self.high}


def column_stats(field: pa.Field, cap: int, hasher: Hasher) -> ColumnStats:
    """The statistics accumulator suited to ``field``'s type."""
    kind = logical_type(field.type)
    if kind in ("integer", "float", "decimal"):
        return NumericStats(field.name, field.type, cap, hasher)
    if kind == "string":
        return StringStats(field.name, field.type, cap, hasher)
    if kind == "boolean":
        return BooleanStats(field.name, field.type)
    if kind in ("date", "timestamp", "time", "duration"):
        return TemporalStats(field.name, field.type, cap, hasher)
    if kind == "binary":
        return BinaryStats(field.name, field.type, cap, hasher)
    return NestedStats(field.name, field.type)


class _DuplicateRows:
    """Exact count of distinct rows from 64-bit row hashes, spilling to disk past a limit."""

    def __init__(self, in_memory: int) -> None:
        self._limit = in_memory
        self._parts: list[np.ndarray] = []
        self._held = 0
        self._dir: str | None = None

    def add(self, hashes: np.ndarray) -> None:
        self._parts.append(hashes)
        self._held += len(hashes)
        if self._held > self._limit:
            self._spill()

    def _spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="datadl-rows-")
        hashes = np.concatenate(self._parts)
        self._parts, self._held = [], 0
        # Equal rows have equal hashes, hence the same prefix: each part is deduplicated
        # alone. Sorting in place groups the prefixes without another copy of the hashes.
        hashes.sort()
        starts = np.arange(_SPILL_PARTS, dtype=np.uint64) << np.uint64(64 - _SPILL_BITS)
        bounds = [*np.searchsorted(hashes, starts).tolist(), len(hashes)]
        for part in range(_SPILL_PARTS):
            chunk = hashes[bounds[part] : bounds[part + 1]]
            if len(chunk):
                with open(os.path.join(self._dir, f"{part}.bin"), "ab") as handle:
                    chunk.tofile(handle)

    def distinct(self) -> int:
        if self._dir is None:
            if not self._parts:
                return 0
            return _count_unique(np.concatenate(self._parts))
        if self._parts:
            self._spill()
        total = 0
        for part in range(_SPILL_PARTS):
            path = os.path.join(self._dir, f"{part}.bin")
            if os.path.exists(path):
                total += _count_unique(np.fromfile(path, dtype=np.uint64))
        return total

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _count_unique(hashes: np.ndarray) -> int:
    if len(hashes) == 0:
        return 0
    hashes.sort()
    return 1 + int(np.count_nonzero(hashes[1:] != hashes[:-1]))


_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)


class TableStats:
    """Statistics of every column and the duplicate-row count, batch after batch.

    Each batch's columns are hashed in one DuckDB query (for duplicate rows and distinct
    sketches), then observed in parallel threads: the kernels release the GIL.
    """

    def __init__(self, schema: pa.Schema, *, exact_distinct: int, exact_rows: int) -> None:
        self._db = duckdb.connect(config={"threads": 2})
        self._lock = threading.Lock()
        self._views = itertools.count()
        self.schema = schema
        self.columns = [column_stats(f, exact_distinct, self._hash_values) for f in schema]
        self.rows = 0
        self._duplicates = _DuplicateRows(exact_rows)
        workers = max(1, min(len(self.columns), os.cpu_count() or 1, 8))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="datadl-stats")

    def _hash_columns(self, arrays: Sequence[pa.Array]) -> list[np.ndarray]:
        names = [f"c{i}" for i in range(len(arrays))]
        table = pa.Table.from_arrays(list(arrays), names=names)
        view = f"batch_{next(self._views)}"
        # One connection, used from several threads: each query runs on its own cursor.
        with self._lock:
            cursor = self._db.cursor()
        try:
            cursor.register(view, table)
            select = ", ".join(f"hash({name}) AS {name}" for name in names)
            result = cursor.sql(f"SELECT {select} FROM {view}").to_arrow_table()  # noqa: S608
        finally:
            cursor.close()
        return [result.column(i).to_numpy() for i in range(len(arrays))]

    def _hash_values(self, values: pa.Array) -> np.ndarray:
        return self._hash_columns([values])[0]

    def observe(self, batch: pa.RecordBatch) -> None:
        """Take one batch of the table."""
        self.rows += batch.num_rows
        if batch.num_columns == 0 or batch.num_rows == 0:
            return
        hashes = self._hash_columns(batch.columns)
        jobs = [
            self._pool.submit(stats.observe, column, column_hashes)
            for stats, column, column_hashes in zip(
                self.columns, batch.columns, hashes, strict=True
            )
        ]
        row = np.zeros(batch.num_rows, dtype=np.uint64)
        for column, column_hashes in zip(batch.columns, hashes, strict=True):
            if column.null_count:
                valid = column.is_valid().to_numpy(zero_copy_only=False)
                column_hashes = np.where(valid, column_hashes, _NULL_HASH)
            row = (row * np.uint64(0x100000001B3)) ^ _mix(column_hashes)
        self._duplicates.add(row)
        for job in jobs:
            job.result()

    def finish(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Per-column statistics and the number of rows that repeat an earlier row."""
        statistics = {c.name: c.finish(self.rows) for c in self.columns}
        duplicates = 0
        if self.columns and self.rows:
            duplicates = self.rows - self._duplicates.distinct()
        return statistics, duplicates

    def close(self) -> None:
        """Release the threads, the hashing database, any spilled files and the sketches."""
        self._pool.shutdown(wait=True)
        self._duplicates.close()
        self._db.close()
        # A failed job's traceback keeps this object alive for a while; the sketches need not.
        self.columns = []
