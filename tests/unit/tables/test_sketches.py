"""The statistics building blocks: distinct sketch, count merging, quantiles, text output."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from datadl.adapters.tables._plan import prefetch, rechunk
from datadl.adapters.tables._stats import Hll, _exact_quantiles, _merge_counts, _value_counts
from datadl.adapters.tables._writers import _joined, neutralise_formulas


def test_hll_estimates_within_its_standard_error() -> None:
    """The HyperLogLog stays within three standard errors at small and large cardinalities."""
    rng = np.random.default_rng(3)
    for n in (10, 1_000, 300_000):
        sketch = Hll()
        hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        sketch.add(hashes)
        sketch.add(hashes[: n // 2])
        assert abs(sketch.estimate() - n) <= max(1, 3 * 1.04 / math.sqrt(2**14) * n)


@given(
    st.lists(
        st.lists(st.sampled_from(["a", "b", "é", ""]) | st.integers(-3, 3).map(str), max_size=20),
        max_size=5,
    )
)
def test_merged_counts_equal_counting_everything_at_once(batches: list[list[str]]) -> None:
    """Counts merged batch by batch equal one count over all values."""
    tables = [_value_counts(pa.array(b, pa.string())) for b in batches if b]
    if not tables:
        return
    merged = _merge_counts(tables)
    assert dict(
        zip(merged.column("value").to_pylist(), merged.column("count").to_pylist(), strict=True)
    ) == Counter(v for b in batches for v in b)


@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=60))
def test_quantiles_from_counts_equal_numpy_linear_quantiles(values: list[float]) -> None:
    """Quantiles from a value → count table equal numpy's linear quantiles over all values."""
    distinct, counts = np.unique(np.array(values), return_counts=True)
    ours = _exact_quantiles(distinct, counts)
    expected = np.quantile(np.array(values), [0.05, 0.25, 0.5, 0.75, 0.95])
    for value, reference in zip(ours.values(), expected, strict=True):
        assert math.isclose(value, reference, rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=50)
@given(st.lists(st.text(max_size=5) | st.none(), max_size=10), st.integers(0, 5), st.integers(0, 5))
def test_joined_rows_read_straight_from_the_buffer(
    rows: list[str | None], start: int, length: int
) -> None:
    """Joining a sliced string array gives exactly its values, each followed by the separator."""
    array = pa.array([r if r is not None else "" for r in rows], pa.string()).slice(start, length)
    expected = "".join(v + "\n" for v in array.to_pylist())
    assert _joined(array, "\n") == expected.encode()


def test_formula_neutralisation_follows_owasp() -> None:
    """Only cells starting with =, +, -, @, tab or carriage return get a leading quote."""
    cells = pa.array(["=1", "+1", "-1", "@a", "\tb", "\rc", "a=1", " =1", None, ""])
    assert neutralise_formulas(cells).to_pylist() == [
        "'=1",
        "'+1",
        "'-1",
        "'@a",
        "'\tb",
        "'\rc",
        "a=1",
        " =1",
        None,
        "",
    ]


@given(st.lists(st.integers(0, 30), max_size=12), st.integers(1, 25))
def test_rechunk_keeps_rows_in_order_in_bounded_batches(sizes: list[int], rows: int) -> None:
    """Rebatching joins small batches and slices large ones, keeping every row in order."""
    start = 0
    batches = []
    for size in sizes:
        batches.append(pa.record_batch({"v": list(range(start, start + size))}))
        start += size
    out = list(rechunk(batches, rows))
    assert all(0 < b.num_rows <= rows for b in out)
    assert [v for b in out for v in b.column(0).to_pylist()] == list(range(start))
    assert all(b.num_rows == rows for b in out[:-1])


def test_prefetch_stops_its_reader_when_the_caller_stops() -> None:
    """Leaving a prefetched loop early closes the source in the reading thread."""
    closed = []

    def source() -> Iterator[pa.RecordBatch]:
        try:
            for i in range(1000):
                yield pa.record_batch({"v": [i]})
        finally:
            closed.append(True)

    stream = prefetch(source())
    assert next(stream).column(0).to_pylist() == [0]
    stream.close()  # type: ignore[attr-defined]
    assert closed == [True]
