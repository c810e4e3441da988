"""The table engine's contract: statistics, quality, preview and conversion against references."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import math
import zipfile
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import python_calamine
import xlsxwriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadl import samples
from datadl.adapters.memory import MemoryBlobStore
from datadl.adapters.tables import ENGINE_VERSION, ArrowTableEngine
from datadl.domain.errors import BadRequest, FileMissing, StorageUnavailable, UnsupportedFormat
from datadl.domain.model import DatasetFile, FileFormat
from datadl.domain.tables import TableProfile
from datadl.ports.tables import ConvertOptions

T = TypeVar("T")

NULLS = ["", "NA", "N/A", "null", "NaN", "-"]
QUANTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
#: Every test must finish well inside this; a hang is a failure, not a stuck suite.
TIMEOUT = 30


# --- helpers ------------------------------------------------------------------------------


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def stored(blobs: MemoryBlobStore, data: bytes, fmt: FileFormat) -> DatasetFile:
    """Store ``data`` and describe it as ``datadl.testing.builders.dataset_file`` does."""
    sha = hashlib.sha256(data).hexdigest()
    key = f"blobs/{sha}.{fmt}"
    await blobs.write(key, _once(data))
    return DatasetFile(
        storage_key=key,
        format=fmt,
        size_bytes=len(data),
        sha256=sha,
        media_type=fmt.media_type,
        filename=f"data.{fmt}",
    )


async def converted(
    engine: ArrowTableEngine, file: DatasetFile, target: FileFormat, **kw: Any
) -> bytes:
    """The whole output of one conversion."""
    stream = engine.convert(file, target, ConvertOptions(**kw))
    return b"".join([chunk async for chunk in stream])


async def bounded(work: Awaitable[T]) -> T:
    """``work``'s result, or a failure if it takes longer than a hang would."""
    return await asyncio.wait_for(work, TIMEOUT)


def one(db: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The single row a DuckDB query answers."""
    row = db.execute(sql).fetchone()
    assert row is not None
    return row


def parquet_bytes(table: pa.Table, row_group_size: int = 7) -> bytes:
    """``table`` as parquet with small row groups, so that reads cross group boundaries."""
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, row_group_size))
    return sink.getvalue()


def close(a: float | None, b: float | None, scale: float = 1.0) -> bool:
    """Floats equal up to summation order."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9 * max(1.0, scale))


def engine_for(blobs: MemoryBlobStore, **kw: Any) -> ArrowTableEngine:
    """An engine with small batches, so that every statistic is merged across batches."""
    return ArrowTableEngine(blobs, **({"batch_rows": 50} | kw))


@pytest.fixture
def blobs() -> MemoryBlobStore:
    # Small storage chunks exercise the bridge between the async stream and the parser.
    return MemoryBlobStore(chunk_size=4096)


@pytest.fixture
def engine(blobs: MemoryBlobStore) -> ArrowTableEngine:
    return engine_for(blobs)


# --- real samples against DuckDB --------------------------------------------------------

_DUCK_TYPES = {
    "BIGINT": "integer",
    "INTEGER": "integer",
    "DOUBLE": "float",
    "VARCHAR": "string",
    "DATE": "date",
    "BOOLEAN": "boolean",
    "TIMESTAMP": "timestamp",
}


def _duck_source(path: Path) -> str:
    if path.suffix == ".json":
        return f"read_json('{path}')"
    nulls = ", ".join(f"'{n}'" for n in NULLS)
    # DuckDB reads Yes/No as booleans; this engine keeps such words as text.
    text = "types={'Clutch Completion': 'VARCHAR'}, " if path.name == "penguins-raw.csv" else ""
    return f"read_csv('{path}', {text}nullstr=[{nulls}], header=true)"


def _plain(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def check_against_duckdb(profile: TableProfile, path: Path) -> None:
    """Every statistic of ``profile`` equals DuckDB's computation over the whole file."""
    db = duckdb.connect()
    db.execute(f"CREATE TABLE t AS SELECT * FROM {_duck_source(path)}")  # noqa: S608
    rows = one(db, "SELECT count(*) FROM t")[0]
    assert profile.row_count == rows
    described = db.execute("DESCRIBE t").fetchall()
    assert [c.name for c in profile.columns] == [d[0] for d in described]
    distinct_rows = one(db, "SELECT count(*) FROM (SELECT DISTINCT * FROM t)")[0]
    dupes = [i for i in profile.quality.issues if i.kind == "duplicate_rows"]
    assert sum(i.affected_rows for i in dupes) == rows - distinct_rows
    for name, duck_type, *_ in described:
        col = f'"{name}"'
        stats = profile.statistics[name]
        column = next(c for c in profile.columns if c.name == name)
        assert column.type == _DUCK_TYPES[duck_type], name
        count, nulls, distinct, low, high = one(
            db,
            f"SELECT count({col}), count(*) - count({col}), count(DISTINCT {col}), "  # noqa: S608
            f"min({col}), max({col}) FROM t",
        )
        assert (stats["count"], stats["nulls"]) == (count, nulls), name
        assert column.nullable == (nulls > 0)
        missing = [
            i for i in profile.quality.issues if i.kind == "missing_values" and i.column == name
        ]
        assert [i.affected_rows for i in missing] == ([nulls] if nulls else [])
        assert stats["distinct"] == {"value": distinct, "exact": True}, name
        assert stats["unique"] == (distinct == count and count > 0)
        if column.type != "float":
            assert (stats["min"], stats["max"]) == (_plain(low), _plain(high)), name
        else:
            assert close(stats["min"], low) and close(stats["max"], high), name
        top = db.execute(
            f"SELECT {col}, count(*) AS n FROM t WHERE {col} IS NOT NULL "  # noqa: S608
            f"GROUP BY {col} ORDER BY n DESC, {col} ASC LIMIT 10"
        ).fetchall()
        assert stats["top_values"] == {
            "value": [{"value": _plain(v), "count": n} for v, n in top],
            "exact": True,
        }, name
        if column.type in ("integer", "float"):
            _check_numeric(db, col, stats, column.type == "integer", profile, name)
        if column.type == "string":
            lengths = one(
                db,
                f"SELECT min(length({col})), avg(length({col})), max(length({col})), "  # noqa: S608
                f"count(*) FILTER (WHERE {col} = '') FROM t",
            )
            assert stats["string_length"]["min"] == lengths[0]
            assert close(stats["string_length"]["mean"], lengths[1])
            assert stats["string_length"]["max"] == lengths[2]
            assert stats["empty_strings"] == lengths[3]
            variants = db.execute(
                f"SELECT sum(n) - max(n) FROM (SELECT lower(trim({col})) AS k, {col} AS v, "  # noqa: S608
                f"count(*) AS n FROM t WHERE {col} IS NOT NULL GROUP BY k, v) "
                "GROUP BY k HAVING count(*) > 1"
            ).fetchall()
            found = [
                i for i in profile.quality.issues if i.kind == "case_variants" and i.column == name
            ]
            assert sum(i.affected_rows for i in found) == sum(int(v[0]) for v in variants)


def _check_numeric(
    db: duckdb.DuckDBPyConnection,
    col: str,
    stats: Mapping[str, Any],
    integral: bool,
    profile: TableProfile,
    name: str,
) -> None:
    mean, std = one(db, f"SELECT avg({col}), stddev_samp({col}) FROM t")  # noqa: S608
    assert close(stats["mean"], mean) and close(stats["std"], std), name
    wanted = list(QUANTILES.values())
    quantiles = one(db, f"SELECT quantile_cont({col}, {wanted}) FROM t")[0]  # noqa: S608
    assert stats["quantiles"]["exact"] is True
    for key, value in zip(QUANTILES, quantiles, strict=True):
        assert close(stats["quantiles"]["value"][key], value), (name, key)
    values = np.array(
        [v for (v,) in db.execute(f"SELECT {col} FROM t WHERE {col} IS NOT NULL").fetchall()],  # noqa: S608
        dtype=np.float64,
    )
    low, high = float(values.min()), float(values.max())
    bins = min(20, int(high - low) + 1) if integral else 20
    assert stats["histogram"] == {
        "value": reference_histogram(values, low, high, bins),
        "exact": True,
    }, name
    q1, q3 = quantiles[1], quantiles[3]
    iqr = q3 - q1
    outliers = [i for i in profile.quality.issues if i.kind == "outliers" and i.column == name]
    if iqr > 0:
        expected = int(((values < q1 - 1.5 * iqr) | (values > q3 + 1.5 * iqr)).sum())
        assert stats["outliers"]["count"] == expected, name
        assert [i.affected_rows for i in outliers] == ([expected] if expected else [])
    else:
        assert not outliers


@pytest.mark.parametrize("name", samples.NAMES)
async def test_every_statistic_of_each_sample_matches_duckdb(
    blobs: MemoryBlobStore, engine: ArrowTableEngine, name: str
) -> None:
    """Each shipped dataset's schema, statistics and issue counts agree with DuckDB's."""
    path = samples.path(name)
    fmt = FileFormat.JSON if name.endswith(".json") else FileFormat.CSV
    file = await stored(blobs, path.read_bytes(), fmt)
    profile = await bounded(engine.profile(file))
    assert profile.sha256 == file.sha256
    assert profile.engine_version == ENGINE_VERSION == engine.version
    assert profile.analyzed_at.tzinfo is not None
    check_against_duckdb(profile, path)
    json.dumps(profile.statistics, allow_nan=False)
    for score in (
        profile.quality.score,
        profile.quality.completeness,
        profile.quality.consistency,
        profile.quality.uniqueness,
        profile.quality.validity,
    ):
        assert 0.0 <= score <= 1.0


async def test_sample_profiles_are_the_same_from_every_input_format(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """A sample converted to each format profiles to the same schema and statistics."""
    original = await stored(blobs, samples.path("penguins.csv").read_bytes(), FileFormat.CSV)
    reference = await engine.profile(original)
    for fmt in (
        FileFormat.TSV,
        FileFormat.JSON,
        FileFormat.JSONL,
        FileFormat.PARQUET,
        FileFormat.XLSX,
    ):
        file = await stored(blobs, await converted(engine, original, fmt), fmt)
        profile = await bounded(engine.profile(file))
        assert [(c.name, c.type) for c in profile.columns] == [
            (c.name, c.type) for c in reference.columns
        ], fmt
        assert profile.row_count == reference.row_count
        assert profile.statistics == reference.statistics, fmt
        assert profile.quality == reference.quality, fmt


# --- generated tables: statistics against pyarrow.compute on the whole table --------------

_FLOATS = st.floats(-1e12, 1e12).map(lambda x: x + 0.0) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 0.0, 5e-324, 1e-300]
)
_UTC = dt.UTC
_KINDS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5)),
    "float": (pa.float64(), _FLOATS),
    "bool": (pa.bool_(), st.booleans()),
    "str": (pa.string(), st.text(max_size=12) | st.sampled_from(["a", "A", " a", "b"])),
    "date": (pa.date32(), st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))),
    "ts": (pa.timestamp("us"), st.datetimes(dt.datetime(1000, 1, 1))),
    "tstz": (
        pa.timestamp("us", "UTC"),
        st.datetimes(dt.datetime(1000, 1, 1), timezones=st.just(_UTC)),
    ),
    "dec": (
        pa.decimal128(12, 3),
        st.decimals(-(10**8), 10**8, places=3, allow_nan=False, allow_infinity=False),
    ),
    "list": (pa.list_(pa.int64()), st.lists(st.integers(-9, 9), max_size=3)),
}


@st.composite
def arrow_tables(
    draw: st.DrawFn, kinds: tuple[str, ...] = tuple(_KINDS), max_rows: int = 40
) -> pa.Table:
    """Tables of random schema, nulls, extreme values and unicode; empty and one-row ones too."""
    rows = draw(st.sampled_from([0, 1]) | st.integers(0, max_rows))
    columns: dict[str, pa.Array] = {}
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        arrow_type, values = _KINDS[kind]
        cells = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        columns[f"{kind}_{index}"] = pa.array(cells, type=arrow_type)
    return pa.table(columns)


def _ref_present(column: pa.ChunkedArray) -> pa.Array:
    values = column.combine_chunks().drop_null()
    if pa.types.is_floating(values.type):
        values = values.filter(pc.is_finite(values))
    return values


def _as_number(value: Any) -> float:
    return float(decimal.Decimal(value)) if isinstance(value, str) else float(value)


def _same_moment(ours: Any, reference: Any) -> bool:
    if isinstance(reference, dt.datetime):
        return dt.datetime.fromisoformat(ours) == reference
    if isinstance(reference, dt.date):
        return dt.date.fromisoformat(ours) == reference
    if isinstance(reference, decimal.Decimal):
        return decimal.Decimal(ours) == reference
    if isinstance(reference, float):
        return close(ours, reference, abs(reference))
    return bool(ours == reference)


def check_generated(table: pa.Table, profile: TableProfile) -> None:
    """Every statistic of ``profile`` equals pyarrow.compute's on the whole of ``table``."""
    assert profile.row_count == table.num_rows
    for name in table.column_names:
        column = table.column(name)
        stats = profile.statistics[name]
        present = _ref_present(column)
        assert stats["nulls"] == column.null_count
        assert stats["count"] == table.num_rows - column.null_count
        kind = name.split("_")[0]
        if kind == "bool":
            assert stats["true_count"] == (pc.sum(present).as_py() or 0)
            assert stats["true_count"] + stats["false_count"] == stats["count"]
            continue
        if kind == "list":
            lengths = pc.list_value_length(present)
            if len(lengths):
                assert stats["list_length"]["min"] == pc.min(lengths).as_py()
                assert stats["list_length"]["max"] == pc.max(lengths).as_py()
            continue
        assert stats["distinct"] == {"value": pc.count_distinct(present).as_py(), "exact": True}
        counted = pc.value_counts(present)
        reference_top = sorted(
            zip(
                counted.field("values").to_pylist(),
                counted.field("counts").to_pylist(),
                strict=True,
            ),
            key=lambda vc: (-vc[1], vc[0]),
        )[:10]
        ours_top = stats["top_values"]["value"]
        assert [t["count"] for t in ours_top] == [c for _, c in reference_top]
        assert all(
            _same_moment(t["value"], v) for t, (v, _) in zip(ours_top, reference_top, strict=True)
        )
        if len(present) == 0:
            assert stats["min"] is None and stats["max"] is None
            continue
        low, high = pc.min_max(present)["min"].as_py(), pc.min_max(present)["max"].as_py()
        assert _same_moment(stats["min"], low) and _same_moment(stats["max"], high), name
        if kind == "str":
            lengths = pc.utf8_length(present)
            assert stats["string_length"]["min"] == pc.min(lengths).as_py()
            assert stats["string_length"]["max"] == pc.max(lengths).as_py()
            assert stats["empty_strings"] == pc.sum(pc.equal(lengths, 0)).as_py()
        if kind in ("int", "float", "dec"):
            _check_generated_numeric(column, present, stats, kind)


def _check_generated_numeric(
    column: pa.ChunkedArray, present: pa.Array, stats: Mapping[str, Any], kind: str
) -> None:
    as_float = pc.cast(present, pa.float64(), safe=False)
    scale = float(pc.max(pc.abs(as_float)).as_py() or 1.0)
    assert close(stats["mean"], pc.mean(as_float).as_py(), scale)
    if len(present) > 1:
        assert close(stats["std"], pc.stddev(as_float, ddof=1).as_py(), scale)
    if kind == "float":
        whole = column.combine_chunks().drop_null()
        assert stats["nan"] == pc.sum(pc.is_nan(whole)).as_py()
        assert stats["infinite"] == pc.sum(pc.is_inf(whole)).as_py()
    reference = pc.quantile(
        as_float, q=list(QUANTILES.values()), interpolation="linear"
    ).to_pylist()
    for key, value in zip(QUANTILES, reference, strict=True):
        assert close(stats["quantiles"]["value"][key], value, scale), key
    values = as_float.to_numpy()
    low, high = float(values.min()), float(values.max())
    if not math.isfinite(high - low):
        return
    bins = min(20, int(high - low) + 1) if kind == "int" else 20
    assert stats["histogram"]["value"] == reference_histogram(values, low, high, bins)


def reference_histogram(values: np.ndarray, low: float, high: float, bins: int) -> dict[str, Any]:
    """numpy's histogram; one bin when the range cannot be split into distinct edges."""
    if low == high:
        return {"edges": [low, high], "counts": [len(values)]}
    try:
        counts, edges = np.histogram(values, bins=bins, range=(low, high))
    except ValueError:
        return {"edges": [low, high], "counts": [len(values)]}
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _duplicate_rows(table: pa.Table) -> int:
    keys = Counter(json.dumps(row, default=str, sort_keys=True) for row in table.to_pylist())
    return sum(n - 1 for n in keys.values())


async def _profile_table(table: pa.Table, **kw: Any) -> TableProfile:
    blobs = MemoryBlobStore(chunk_size=512)
    engine = engine_for(blobs, batch_rows=7, **kw)
    file = await stored(blobs, parquet_bytes(table, row_group_size=11), FileFormat.PARQUET)
    return await bounded(engine.profile(file))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrow_tables())
def test_generated_statistics_match_pyarrow_on_the_whole_table(table: pa.Table) -> None:
    """Statistics merged over batches equal pyarrow.compute's over the whole generated table."""
    profile = asyncio.run(_profile_table(table))
    check_generated(table, profile)
    duplicates = sum(i.affected_rows for i in profile.quality.issues if i.kind == "duplicate_rows")
    assert duplicates == _duplicate_rows(table)
    json.dumps(profile.statistics, allow_nan=False)
    declared = {f.name: f.nullable for f in table.schema}
    assert {c.name: c.nullable for c in profile.columns} == declared


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 400), min_size=30, max_size=300),
    # Adding 0.0 turns -0.0 into 0.0, which Python's Counter would not tell apart.
    st.lists(st.floats(-1e6, 1e6).map(lambda x: x + 0.0), min_size=30, max_size=300),
)
def test_estimates_say_so_and_stay_within_their_bounds(
    ints: list[int], floats: list[float]
) -> None:
    """Past the exact limit, distinct counts, top values and quantiles are flagged and bounded."""
    rows = min(len(ints), len(floats))
    table = pa.table({"i": ints[:rows], "f": floats[:rows]})
    profile = asyncio.run(_profile_table(table, exact_distinct=5))
    for name in ("i", "f"):
        values = table.column(name).to_pylist()
        stats = profile.statistics[name]
        truth = len(set(values))
        distinct = stats["distinct"]
        if truth > 5:
            assert (
                distinct["exact"] is False and distinct["error_kind"] == "relative_standard_error"
            )
            assert abs(distinct["value"] - truth) <= max(2, 4 * distinct["error_bound"] * truth)
        top = stats["top_values"]
        counts = Counter(values)
        for entry in top["value"]:
            true_count = counts[entry["value"]]
            assert entry["count"] <= true_count <= entry["count"] + top.get("error_bound", 0)
        quantiles = stats["quantiles"]
        if not quantiles["exact"]:
            ordered = np.sort(np.array(values, dtype=np.float64))
            eps = quantiles["error_bound"] * 2 + 1 / len(ordered)
            for key, q in QUANTILES.items():
                value = quantiles["value"][key]
                below = np.searchsorted(ordered, value, side="left") / len(ordered)
                at_most = np.searchsorted(ordered, value, side="right") / len(ordered)
                assert below - eps <= q <= at_most + eps, key
            assert sum(stats["histogram"]["value"]["counts"]) == pytest.approx(len(values), abs=2)


async def test_duplicate_rows_are_counted_exactly_when_hashes_spill_to_disk() -> None:
    """Past the in-memory limit, row hashes spill by prefix and the count stays exact."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 60, size=(500, 2))
    table = pa.table({"a": base[:, 0], "b": base[:, 1]})
    profile = await _profile_table(table, exact_rows=40)
    found = sum(i.affected_rows for i in profile.quality.issues if i.kind == "duplicate_rows")
    assert found == _duplicate_rows(table)


# --- round trips: parquet -> each format -> parquet ---------------------------------------

_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=15
).map(lambda s: "s" + s)
_PRINTABLE = st.text(
    st.characters(min_codepoint=0x20, exclude_categories=["Cs", "Cc"]), max_size=15
)
_SECONDS = st.datetimes(dt.datetime(1900, 3, 1), dt.datetime(9999, 1, 1)).map(
    lambda d: d.replace(microsecond=0)
)

#: What each format can carry (module docstring of the engine lists what it cannot).
_CARRIED: dict[FileFormat, dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]]] = {
    FileFormat.CSV: {
        "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "float": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
        "bool": (pa.bool_(), st.booleans()),
        "str": (pa.string(), _TEXT),
        "date": (pa.date32(), st.dates(dt.date(1000, 1, 1))),
        "ts": (pa.timestamp("us"), st.datetimes(dt.datetime(1000, 1, 1))),
        "tstz": (
            pa.timestamp("us", "UTC"),
            st.datetimes(dt.datetime(1000, 1, 1), timezones=st.just(_UTC)),
        ),
    },
    FileFormat.JSON: {
        "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "float": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
        "bool": (pa.bool_(), st.booleans()),
        "str": (pa.string(), _TEXT | st.just("")),
        "date": (pa.date32(), st.dates(dt.date(1000, 1, 1))),
        "ts": (pa.timestamp("us"), st.datetimes(dt.datetime(1000, 1, 1))),
        "tstz": (
            pa.timestamp("us", "UTC"),
            st.datetimes(dt.datetime(1000, 1, 1), timezones=st.just(_UTC)),
        ),
        "list": (pa.list_(pa.int64()), st.lists(st.integers(-(2**40), 2**40), max_size=3)),
        "struct": (
            pa.struct([("a", pa.int64()), ("b", pa.string())]),
            st.fixed_dictionaries({"a": st.integers(-5, 5), "b": st.text(max_size=5)}),
        ),
    },
    FileFormat.XLSX: {
        "int": (pa.int64(), st.integers(-(2**53), 2**53)),
        "float": (pa.float64(), st.floats(-1e300, 1e300)),
        "bool": (pa.bool_(), st.booleans()),
        "str": (pa.string(), _PRINTABLE.map(lambda s: "s" + s)),
        "date": (pa.date32(), st.dates(dt.date(1900, 3, 1))),
        "ts": (pa.timestamp("us"), _SECONDS),
    },
}
_CARRIED[FileFormat.TSV] = _CARRIED[FileFormat.CSV]
_CARRIED[FileFormat.JSONL] = _CARRIED[FileFormat.JSON]


@st.composite
def carried_tables(draw: st.DrawFn, fmt: FileFormat) -> pa.Table:
    """Tables of only the types ``fmt`` can carry, each column with at least one value."""
    kinds = _CARRIED[fmt]
    rows = draw(st.integers(1, 25))
    columns: dict[str, pa.Array] = {}
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(sorted(kinds)))
        arrow_type, values = kinds[kind]
        cells = draw(st.lists(st.none() | values, min_size=rows - 1, max_size=rows - 1))
        # A sheet does not store a trailing row of empty cells, so xlsx ends with a value.
        at = rows - 1 if fmt is FileFormat.XLSX and index == 0 else draw(st.integers(0, rows - 1))
        cells.insert(at, draw(values))
        columns[f"{kind}_{index}"] = pa.array(cells, type=arrow_type)
    return pa.table(columns)


def _same_cells(left: list[Any], right: list[Any], *, digits: int | None = None) -> bool:
    """Equal cells, NaN equal to NaN; floats to ``digits`` significant digits if given."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            if digits is not None:
                return math.isclose(a, b, rel_tol=10.0 ** (1 - digits))
        return bool(a == b)

    return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))


async def _round_trip(table: pa.Table, fmt: FileFormat) -> pa.Table:
    blobs = MemoryBlobStore(chunk_size=1000)
    engine = engine_for(blobs, batch_rows=6)
    source = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    middle = await stored(blobs, await bounded(converted(engine, source, fmt)), fmt)
    back = await bounded(converted(engine, middle, FileFormat.PARQUET))
    return pq.read_table(io.BytesIO(back))


@pytest.mark.parametrize("fmt", [f for f in FileFormat if f is not FileFormat.PARQUET])
def test_parquet_round_trips_through_each_format_keep_what_it_carries(fmt: FileFormat) -> None:
    """Parquet → format → parquet gives the same table for every type the format carries."""

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(carried_tables(fmt))
    def run(table: pa.Table) -> None:
        back = asyncio.run(_round_trip(table, fmt))
        assert back.column_names == table.column_names
        assert back.num_rows == table.num_rows
        for name in table.column_names:
            original = table.column(name)
            returned = pc.cast(back.column(name), original.type, safe=False)
            # xlsxwriter writes 16 significant digits of a double (Excel shows 15).
            digits = 16 if fmt is FileFormat.XLSX else None
            assert _same_cells(returned.to_pylist(), original.to_pylist(), digits=digits), name

    run()


async def test_parquet_round_trip_keeps_every_type_and_row_group_sizes(
    blobs: MemoryBlobStore,
) -> None:
    """Parquet to parquet keeps decimals, nested values, zones and nanoseconds exactly."""
    engine = engine_for(blobs, row_group_rows=4)
    table = pa.table(
        {
            "dec": pa.array([decimal.Decimal("1.10"), None] * 5, pa.decimal128(12, 2)),
            "ns": pa.array([1, 2] * 5, pa.timestamp("ns", "Europe/Paris")),
            "nested": pa.array([{"x": [1, 2]}, None] * 5),
            "bin": pa.array([b"\x00\xff", b""] * 5),
            "small": pa.array(range(10), pa.int8()),
        }
    )
    file = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    back = pq.ParquetFile(io.BytesIO(await converted(engine, file, FileFormat.PARQUET)))
    assert back.read().equals(table)
    assert [back.metadata.row_group(i).num_rows for i in range(back.num_row_groups)] == [4, 4, 2]


# --- planted defects ----------------------------------------------------------------------


def _sample_rows(name: str) -> list[list[str]]:
    with samples.path(name).open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _csv_of(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _issues(profile: TableProfile, kind: str, column: str | None) -> list[int]:
    return [
        i.affected_rows for i in profile.quality.issues if i.kind == kind and i.column == column
    ]


def _plant(name: str, column: str, rows: list[int], value: Callable[[str], str]) -> bytes:
    table = _sample_rows(name)
    index = table[0].index(column)
    for row in rows:
        table[row + 1][index] = value(table[row + 1][index])
    return _csv_of(table)


_DEFECTS: list[tuple[str, str, str | None, list[int], Callable[[str], str]]] = [
    ("penguins.csv", "missing_values", "species", [3, 10, 50], lambda v: "NA"),
    ("penguins.csv", "type_mismatch", "body_mass_g", [5, 7], lambda v: "heavy"),
    ("penguins.csv", "case_variants", "island", [1, 2, 200], lambda v: f" {v.lower()}"),
    ("penguins.csv", "outliers", "flipper_length_mm", [20, 30], lambda v: "10000"),
    ("penguins-raw.csv", "mixed_date_formats", "Date Egg", [0, 9, 99, 300], lambda v: "11/16/2007"),
    ("airports.csv", "duplicate_key", "iata", [11], lambda v: "00M"),
    ("seattle-weather.csv", "empty_strings", "weather", [4, 8], lambda v: "  "),
]


@pytest.mark.parametrize(("name", "kind", "column", "rows", "value"), _DEFECTS)
async def test_planted_defects_are_found_with_their_affected_rows(
    blobs: MemoryBlobStore,
    engine: ArrowTableEngine,
    name: str,
    kind: str,
    column: str,
    rows: list[int],
    value: Callable[[str], str],
) -> None:
    """Each planted defect is reported on its column with its row count; the clean copy has none."""
    clean = await bounded(
        engine.profile(await stored(blobs, _csv_of(_sample_rows(name)), FileFormat.CSV))
    )
    assert _issues(clean, kind, column) == []
    planted = _plant(name, column, rows, value)
    profile = await bounded(engine.profile(await stored(blobs, planted, FileFormat.CSV)))
    assert _issues(profile, kind, column) == [len(rows)]
    worse = {
        "missing_values": "completeness",
        "type_mismatch": "consistency",
        "case_variants": "consistency",
        "mixed_date_formats": "consistency",
        "outliers": "validity",
        "empty_strings": "validity",
        "duplicate_key": "uniqueness",
    }[kind]
    if kind != "duplicate_key":
        assert getattr(profile.quality, worse) < getattr(clean.quality, worse)
    assert profile.quality.score < clean.quality.score or kind == "duplicate_key"


async def test_planted_duplicate_rows_are_counted(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """Copies of rows appended to a sample are counted as duplicates; the clean sample has none."""
    rows = _sample_rows("penguins.csv")
    clean = await engine.profile(await stored(blobs, _csv_of(rows), FileFormat.CSV))
    assert _issues(clean, "duplicate_rows", None) == []
    planted = [*rows, rows[1], rows[2], rows[1], rows[300]]
    profile = await engine.profile(await stored(blobs, _csv_of(planted), FileFormat.CSV))
    assert _issues(profile, "duplicate_rows", None) == [4]
    assert profile.quality.uniqueness == pytest.approx(1 - 4 / 348)


async def test_text_after_many_integers_becomes_a_text_column_with_an_issue(
    blobs: MemoryBlobStore,
) -> None:
    """A column holding text after thousands of integers (in later batches) is text, not a crash."""
    engine = engine_for(blobs, batch_rows=100)
    lines = ["n,m"] + [f"{i},{i}" for i in range(5000)] + ["oops,5000", "12.5,5001"]
    file = await stored(blobs, ("\n".join(lines) + "\n").encode(), FileFormat.CSV)
    profile = await bounded(engine.profile(file))
    assert [c.type for c in profile.columns] == ["string", "integer"]
    mismatch = [i for i in profile.quality.issues if i.kind == "type_mismatch"]
    assert [(i.column, i.affected_rows) for i in mismatch] == [("n", 1)]
    assert "oops" in mismatch[0].message
    page = await engine.preview(file, offset=4999, limit=3)
    assert page.rows == (("4999", 4999), ("oops", 5000), ("12.5", 5001))


async def test_json_values_of_changing_type_become_text_with_an_issue(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """json values that change type are read as text and counted; the rest keep their types."""
    records = [{"a": i, "b": f"2024-01-{i % 28 + 1:02d}"} for i in range(300)]
    records[250]["a"] = "three hundred"
    records[260]["a"] = {"x": 1}
    file = await stored(blobs, json.dumps(records).encode(), FileFormat.JSON)
    profile = await bounded(engine.profile(file))
    assert [(c.name, c.type) for c in profile.columns] == [("a", "string"), ("b", "date")]
    assert _issues(profile, "type_mismatch", "a") == [2]
    page = await engine.preview(file, offset=249, limit=2)
    assert page.rows == (("249", "2024-01-26"), ("three hundred", "2024-01-27"))


# --- malformed input: a clear error, never a crash or a hang ------------------------------


def _xlsx_bytes(write: Callable[[Any, Any], None]) -> bytes:
    sink = io.BytesIO()
    workbook = xlsxwriter.Workbook(sink, {"in_memory": True})
    write(workbook, workbook.add_worksheet())
    workbook.close()
    return sink.getvalue()


def _merged_header(workbook: Any, sheet: Any) -> None:
    sheet.merge_range(0, 0, 0, 1, "measurements")
    sheet.write_string(0, 2, "site")
    sheet.write_row(1, 0, [1, 2, "a"])


_PENGUINS_PARQUET = parquet_bytes(pa.table({"a": list(range(100)), "b": ["x"] * 100}))

_MALFORMED: list[tuple[str, bytes, FileFormat, str]] = [
    ("ragged rows", b"a,b\n1,2\n3,4,5\n6,7\n", FileFormat.CSV, "fields"),
    ("binary bytes", b"a,b\n\x00\x01\x02,\x00\n", FileFormat.CSV, "binary"),
    ("truncated parquet footer", _PENGUINS_PARQUET[:-20], FileFormat.PARQUET, "parquet"),
    (
        "parquet cut in the middle",
        _PENGUINS_PARQUET[: len(_PENGUINS_PARQUET) // 2],
        FileFormat.PARQUET,
        "parquet",
    ),
    ("json array cut in the middle", b'[{"a": 1}, {"a": 2}, {"a"', FileFormat.JSON, "cut off"),
    ("json string cut in the middle", b'[{"a": "abc', FileFormat.JSON, "cut off"),
    ("json array of numbers", b"[1, 2, 3]", FileFormat.JSON, "not a json object"),
    ("json with trailing data", b'[{"a": 1}] {"b": 2}', FileFormat.JSON, "after"),
    (
        "jsonl with a broken line",
        b'{"a": 1}\n{"a": 2\n{"a": 3}\n',
        FileFormat.JSONL,
        "not valid json",
    ),
    ("jsonl with a scalar line", b'{"a": 1}\n42\n', FileFormat.JSONL, "not a json object"),
    ("xlsx with merged header cells", _xlsx_bytes(_merged_header), FileFormat.XLSX, "merged"),
    ("xlsx that is not a zip", b"PK\x03\x04 not really a workbook", FileFormat.XLSX, "xlsx"),
]


@pytest.mark.parametrize(
    ("case", "data", "fmt", "says"), _MALFORMED, ids=[m[0] for m in _MALFORMED]
)
async def test_malformed_input_is_a_clear_unsupported_format(
    blobs: MemoryBlobStore,
    engine: ArrowTableEngine,
    case: str,
    data: bytes,
    fmt: FileFormat,
    says: str,
) -> None:
    """Profile, preview and every conversion refuse malformed input with a hint, promptly."""
    file = await stored(blobs, data, fmt)
    calls = [
        engine.profile(file),
        engine.preview(file, offset=0, limit=1000),
        converted(engine, file, FileFormat.CSV),
        converted(engine, file, FileFormat.XLSX),
    ]
    for call in calls:
        with pytest.raises(UnsupportedFormat) as caught:
            await bounded(call)
        assert says in caught.value.message.lower(), caught.value.message
        assert caught.value.hint


async def test_text_that_is_not_utf8_is_read_as_windows_1252(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """A cp1252 csv (and a UTF-8 one with a byte order mark) reads with the right characters."""
    body = "name,price\ncafé,3\nnaïve €,4\n"
    legacy = await stored(blobs, body.encode("cp1252"), FileFormat.CSV)
    bom = await stored(blobs, b"\xef\xbb\xbf" + body.encode(), FileFormat.CSV)
    utf16 = await stored(blobs, body.encode("utf-16"), FileFormat.CSV)
    for file in (legacy, bom, utf16):
        page = await bounded(engine.preview(file, offset=0, limit=10))
        assert [c.name for c in page.columns] == ["name", "price"]
        assert page.rows == (("café", 3), ("naïve €", 4))


class _FailingBlobStore(MemoryBlobStore):
    """A store whose reads break after the first chunk, as a lost connection does."""

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async def broken() -> AsyncIterator[bytes]:
            async for chunk in super(_FailingBlobStore, self).read(key, start, end):
                yield chunk
                raise StorageUnavailable("The object store hung up.")

        return broken()


@pytest.mark.parametrize("fmt", list(FileFormat))
async def test_storage_errors_pass_through_unchanged(fmt: FileFormat) -> None:
    """A missing file is FileMissing and a broken store StorageUnavailable, never a parse error."""
    table = pa.table({"a": list(range(2000)), "b": [f"v{i}" for i in range(2000)]})
    healthy = MemoryBlobStore()
    source = await stored(healthy, parquet_bytes(table, 500), FileFormat.PARQUET)
    data = await converted(engine_for(healthy), source, fmt)
    blobs = _FailingBlobStore(chunk_size=64)
    engine = engine_for(blobs)
    file = await stored(blobs, data, fmt)
    missing = attrs.evolve(file, storage_key="blobs/gone")
    with pytest.raises(FileMissing):
        await bounded(engine.profile(missing))
    with pytest.raises(FileMissing):
        await bounded(engine.preview(missing, offset=0, limit=5))
    with pytest.raises(FileMissing):
        await bounded(converted(engine, missing, FileFormat.CSV))
    with pytest.raises(StorageUnavailable):
        await bounded(engine.profile(file))
    with pytest.raises(StorageUnavailable):
        await bounded(converted(engine, file, FileFormat.JSONL))


# --- xlsx and csv safety ------------------------------------------------------------------

_FORMULAS = ["=1+1", '=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain"]


async def test_xlsx_writes_formula_like_text_as_text(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """Every text cell in xlsx output is a string cell, never a formula, and reads back as text."""
    table = pa.table({"=cmd": _FORMULAS, "n": list(range(len(_FORMULAS)))})
    file = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    data = await converted(engine, file, FileFormat.XLSX)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/")]
        assert sheets
        for sheet in sheets:
            assert b"<f>" not in archive.read(sheet) and b"<f " not in archive.read(sheet)
    cells = python_calamine.load_workbook(io.BytesIO(data)).get_sheet_by_index(0).to_python()
    assert cells[0] == ["=cmd", "n"]
    assert [row[0] for row in cells[1:]] == [v if v != "\rx" else "\rx" for v in _FORMULAS]


async def test_xlsx_beyond_a_sheet_is_refused_before_the_first_byte(blobs: MemoryBlobStore) -> None:
    """More rows than a sheet holds is a BadRequest naming the limit, raised before any output."""
    engine = engine_for(blobs, batch_rows=65_536)
    big = pa.table({"a": pa.array(np.zeros(1_048_576, dtype=np.int8))})
    parquet = await stored(blobs, parquet_bytes(big, 200_000), FileFormat.PARQUET)
    text = await stored(blobs, b"a\n" + b"1\n" * 1_048_576, FileFormat.CSV)
    for file in (parquet, text):
        stream = engine.convert(file, FileFormat.XLSX, ConvertOptions())
        with pytest.raises(BadRequest) as caught:
            await bounded(anext(stream))
        assert "1,048,575" in caught.value.message
        assert "csv" in caught.value.hint and "parquet" in caught.value.hint
    fits = await stored(blobs, parquet_bytes(big.slice(1), 200_000), FileFormat.PARQUET)
    assert (await bounded(converted(engine, fits, FileFormat.PARQUET)))[:4] == b"PAR1"


@pytest.mark.parametrize(("fmt", "separator"), [(FileFormat.CSV, ","), (FileFormat.TSV, "\t")])
async def test_formula_neutralisation_prefixes_risky_cells_only_when_asked(
    blobs: MemoryBlobStore, engine: ArrowTableEngine, fmt: FileFormat, separator: str
) -> None:
    """Neutralising quotes cells starting with =, +, -, @, tab or CR; the rest stay as they are."""
    whole = [-3.0] * len(_FORMULAS)  # whole floats are written as text, yet are numbers
    table = pa.table({"=h": _FORMULAS, "n": [-1] * len(_FORMULAS), "f": whole})
    file = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    plain = await converted(engine, file, fmt)
    safe = await converted(engine, file, fmt, neutralize_formulas=True)

    def cells(data: bytes) -> list[list[str]]:
        return list(csv.reader(io.StringIO(data.decode(), newline=""), delimiter=separator))

    assert cells(plain)[0] == ["=h", "n", "f"]
    assert [row[0] for row in cells(plain)[1:]] == _FORMULAS
    assert cells(safe)[0] == ["'=h", "n", "f"]
    assert [row[0] for row in cells(safe)[1:]] == ["'" + v for v in _FORMULAS[:-1]] + ["plain"]
    assert {row[1] for row in cells(safe)[1:]} == {"-1"}
    assert {row[2] for row in cells(safe)[1:]} == {"-3.0"}


# --- preview ------------------------------------------------------------------------------


class _CountingBlobStore(MemoryBlobStore):
    """A store that counts the bytes it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async def counted() -> AsyncIterator[bytes]:
            async for chunk in super(_CountingBlobStore, self).read(key, start, end):
                self.bytes_read += len(chunk)
                yield chunk

        return counted()


async def test_parquet_preview_reads_only_the_row_groups_of_its_window() -> None:
    """A deep parquet page fetches its row groups and the footer, not the whole file."""
    blobs = _CountingBlobStore()
    engine = engine_for(blobs)
    rng = np.random.default_rng(1)
    table = pa.table({"i": np.arange(200_000), "f": rng.random(200_000)})
    file = await stored(blobs, parquet_bytes(table, 10_000), FileFormat.PARQUET)
    page = await bounded(engine.preview(file, offset=150_995, limit=10, columns=["f", "i"]))
    assert blobs.bytes_read < file.size_bytes / 5
    assert page.total_rows == 200_000
    assert [c.name for c in page.columns] == ["f", "i"]
    assert [r[1] for r in page.rows] == list(range(150_995, 151_005))
    assert [r[0] for r in page.rows] == table.column("f").to_pylist()[150_995:151_005]


async def test_preview_renders_values_faithfully(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """Nulls, ISO dates and times, unrounded floats, decimals and long text come out exact."""
    long_text = "x" * 100_000
    table = pa.table(
        {
            "f": [0.1 + 0.2, math.nan, -math.inf],
            "d": pa.array([dt.date(2024, 2, 29), None, dt.date(1, 1, 1)]),
            "ts": pa.array([dt.datetime(2024, 1, 1, 12, 30, 1, 5), None, None], pa.timestamp("us")),
            "tz": pa.array(
                [dt.datetime(2024, 1, 1, tzinfo=_UTC)] * 3, pa.timestamp("s", "Europe/Paris")
            ),
            "dec": pa.array(
                [decimal.Decimal("12345678901234567890.123"), None, None], pa.decimal128(38, 3)
            ),
            "s": [long_text, "", None],
            "big": [2**63 - 1, None, -(2**63)],
            "l": [[1, None], [], None],
        }
    )
    file = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    page = await bounded(engine.preview(file, offset=0, limit=5))
    assert page.total_rows == 3 and page.offset == 0 and page.limit == 5
    assert [c.type for c in page.columns] == [
        "float",
        "date",
        "timestamp",
        "timestamp",
        "decimal",
        "string",
        "integer",
        "list",
    ]
    assert page.rows[0] == (
        0.30000000000000004,
        "2024-02-29",
        "2024-01-01T12:30:01.000005",
        "2024-01-01T01:00:00.000+01:00",
        "12345678901234567890.123",
        long_text,
        2**63 - 1,
        [1, None],
    )
    assert page.rows[1] == ("NaN", None, None, "2024-01-01T01:00:00.000+01:00", None, "", None, [])
    assert page.rows[2][0] == "-Infinity" and page.rows[2][1] == "0001-01-01"
    json.dumps([list(r) for r in page.rows], allow_nan=False)


async def test_preview_windows_columns_and_limits(blobs: MemoryBlobStore) -> None:
    """Windows land on the right rows in every format; bad limits and unknown columns fail."""
    engine = engine_for(blobs, batch_rows=700)
    data = samples.path("airports.csv").read_bytes()
    source = await stored(blobs, data, FileFormat.CSV)
    expected = _sample_rows("airports.csv")[1001:1004]
    for fmt in FileFormat:
        file = (
            source
            if fmt is FileFormat.CSV
            else await stored(blobs, await converted(engine, source, fmt), fmt)
        )
        page = await bounded(engine.preview(file, offset=1000, limit=3, columns=["city", "iata"]))
        assert [list(r) for r in page.rows] == [[r[2], r[0]] for r in expected], fmt
        tail = await engine.preview(file, offset=3370, limit=50)
        assert len(tail.rows) == 6 and tail.total_rows == 3376
        empty = await engine.preview(file, offset=10_000, limit=10)
        assert empty.rows == ()
    with pytest.raises(BadRequest):
        await engine.preview(source, offset=0, limit=1001)
    with pytest.raises(BadRequest):
        await engine.preview(source, offset=-1, limit=10)
    with pytest.raises(BadRequest) as caught:
        await engine.preview(source, offset=0, limit=10, columns=["iata", "nope"])
    assert "nope" in caught.value.message


async def test_first_page_before_profiling_and_full_types_after(blobs: MemoryBlobStore) -> None:
    """Before a profile a csv preview infers from a prefix; after it, from the whole file."""
    engine = ArrowTableEngine(blobs)
    lines = ["v"] + [str(i) for i in range(200_000)] + ["text"]
    file = await stored(blobs, ("\n".join(lines) + "\n").encode(), FileFormat.CSV)
    early = await engine.preview(file, offset=0, limit=2)
    assert early.columns[0].type == "integer" and early.rows == ((0,), (1,))
    assert early.total_rows is None
    await engine.profile(file)
    later = await engine.preview(file, offset=0, limit=2)
    assert later.columns[0].type == "string" and later.rows == (("0",), ("1",))
    assert later.total_rows == 200_001


# --- conversion details -------------------------------------------------------------------


async def test_json_outputs_are_valid_json_with_types_kept(
    blobs: MemoryBlobStore, engine: ArrowTableEngine
) -> None:
    """json is one array of objects and jsonl one object per line, numbers and nulls as such."""
    table = pa.table(
        {
            "i": [1, None, 3],
            "f": [1.0, 2.5, math.nan],
            "s": ['a"b\n', "é\u2028", None],
            "d": [dt.date(2024, 1, 2)] * 3,
            "nested": [{"k": [1]}, None, {"k": []}],
            "bin": [b"\x00\xff", b"", None],
        }
    )
    file = await stored(blobs, parquet_bytes(table), FileFormat.PARQUET)
    expected = [
        {"i": 1, "f": 1.0, "s": 'a"b\n', "d": "2024-01-02", "nested": {"k": [1]}, "bin": "AP8="},
        {"i": None, "f": 2.5, "s": "é\u2028", "d": "2024-01-02", "nested": None, "bin": ""},
        {"i": 3, "f": None, "s": None, "d": "2024-01-02", "nested": {"k": []}, "bin": None},
    ]
    as_array = json.loads(await converted(engine, file, FileFormat.JSON))
    assert as_array == expected
    assert isinstance(as_array[0]["f"], float) and isinstance(as_array[0]["i"], int)
    # bytes.splitlines, unlike str.splitlines, does not split at U+2028 inside a value.
    lines = (await converted(engine, file, FileFormat.JSONL)).splitlines()
    assert [json.loads(line) for line in lines] == expected
    empty = await stored(blobs, parquet_bytes(table.slice(0, 0)), FileFormat.PARQUET)
    assert json.loads(await converted(engine, empty, FileFormat.JSON)) == []
    assert await converted(engine, empty, FileFormat.JSONL) == b""
    header = await converted(engine, empty, FileFormat.CSV)
    assert header.decode().splitlines() == ['"i","f","s","d","nested","bin"']


async def test_an_abandoned_conversion_stops_and_the_engine_stays_usable(
    blobs: MemoryBlobStore,
) -> None:
    """A client that stops reading halfway ends the conversion promptly; later work still runs."""
    engine = engine_for(blobs, batch_rows=1000)
    table = pa.table({"a": np.arange(300_000), "b": np.arange(300_000) * 0.5})
    file = await stored(blobs, parquet_bytes(table, 50_000), FileFormat.PARQUET)
    stream = engine.convert(file, FileFormat.CSV, ConvertOptions())
    first = await bounded(anext(stream))
    assert first.startswith(b'"a","b"')
    assert isinstance(stream, AsyncGenerator)
    await bounded(stream.aclose())
    task = asyncio.create_task(engine.profile(file))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    profile = await bounded(engine.profile(file))
    assert profile.row_count == 300_000


async def test_a_workbook_that_unzips_past_the_limit_is_refused_before_it_is_read(
    blobs: MemoryBlobStore, engine: ArrowTableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip bomb dressed as xlsx never reaches calamine, which would expand a whole sheet."""
    from datadl.adapters.tables import _xlsx

    def many_rows(workbook: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["n", "text"])
        for row in range(1, 3000):
            sheet.write_row(row, 0, [row, "the same words again and again"])

    file = await stored(blobs, _xlsx_bytes(many_rows), FileFormat.XLSX)
    monkeypatch.setattr(_xlsx, "MAX_UNZIPPED_BYTES", 50_000)
    with pytest.raises(UnsupportedFormat) as caught:
        await bounded(engine.profile(file))
    assert "expands to" in caught.value.message
    assert caught.value.hint is not None and "csv or parquet" in caught.value.hint
    monkeypatch.setattr(_xlsx, "MAX_UNZIPPED_BYTES", 512 * 1024 * 1024)
    profile = await bounded(engine.profile(file))
    assert profile.row_count == 2999
