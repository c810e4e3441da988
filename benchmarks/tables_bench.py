"""Benchmark of the table engine against DuckDB and bare pyarrow/xlsxwriter loops, with peak RSS.

Run ``python benchmarks/tables_bench.py --rows 10700000`` for the issue's 1 GiB case, or a
smaller ``--rows`` for a quick look. Every case runs in a fresh process so that its peak RSS
is its own; data is generated once into ``--dir`` (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xlsxwriter

from datadl.adapters.tables import ArrowTableEngine
from datadl.domain.errors import FileMissing
from datadl.domain.model import DatasetFile, FileFormat
from datadl.ports.storage import BlobStat
from datadl.ports.tables import ConvertOptions

XLSX_ROWS = 1_048_575
_CHUNK = 1 << 20
_GEN_BATCH = 500_000


class LocalFiles:
    """A read-only BlobStore over a directory, enough for the engine to read from."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._root / key
        if not path.exists():
            raise FileMissing(key)
        with path.open("rb") as handle:
            handle.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def stat(self, key: str) -> BlobStat:
        path = self._root / key
        if not path.exists():
            raise FileMissing(key)
        return BlobStat(size=path.stat().st_size, modified_at=None)


def generate(directory: Path, rows: int) -> None:
    """A csv of integers, floats, strings, timestamps and some nulls, and its parquet."""
    rng = np.random.default_rng(42)
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("quantity", pa.int64()),
            ("price", pa.float64()),
            ("ratio", pa.float64()),
            ("name", pa.string()),
            ("category", pa.string()),
            ("created", pa.timestamp("us")),
        ]
    )
    categories = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    start = np.datetime64("2020-01-01T00:00:00", "us")
    csv_writer = pacsv.CSVWriter(str(directory / "data.csv"), schema)
    parquet = pq.ParquetWriter(str(directory / "data.parquet"), schema)
    head = pq.ParquetWriter(str(directory / "head.parquet"), schema)
    written = 0
    while written < rows:
        n = min(_GEN_BATCH, rows - written)
        ids = np.arange(written, written + n)
        quantity = pa.array(rng.integers(0, 1000, n), mask=rng.random(n) < 0.02)
        ratio = pa.array(rng.normal(0, 1, n), mask=rng.random(n) < 0.05)
        names = pa.array([f"user-{v:09d}" for v in rng.integers(0, 10**9, n)])
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(ids),
                quantity,
                pa.array(np.round(rng.random(n) * 1000, 2)),
                ratio,
                names,
                pa.array(categories[rng.integers(0, len(categories), n)]),
                pa.array(start + rng.integers(0, 10**14, n).astype("timedelta64[us]")),
            ],
            schema=schema,
        )
        csv_writer.write_batch(batch)
        table = pa.Table.from_batches([batch])
        parquet.write_table(table, row_group_size=131_072)
        if written < XLSX_ROWS:
            head.write_table(table.slice(0, XLSX_ROWS - written), row_group_size=131_072)
        written += n
    csv_writer.close()
    parquet.close()
    head.close()


def _file(directory: Path, name: str, fmt: FileFormat) -> DatasetFile:
    size = (directory / name).stat().st_size
    digest = hashlib.sha256(f"{name}:{size}".encode()).hexdigest()
    return DatasetFile(
        storage_key=name,
        format=fmt,
        size_bytes=size,
        sha256=digest,
        media_type=fmt.media_type,
        filename=name,
    )


async def _drain(chunks: AsyncIterator[bytes], path: Path) -> int:
    total = 0
    with path.open("wb") as out:
        async for chunk in chunks:
            out.write(chunk)
            total += len(chunk)
    return total


def _engine_convert(
    directory: Path, name: str, fmt: FileFormat, target: FileFormat, *, warm: bool = False
) -> float | None:
    engine = ArrowTableEngine(LocalFiles(directory))  # type: ignore[arg-type]
    file = _file(directory, name, fmt)
    output = directory / f"out.{target}"

    async def run() -> float | None:
        if not warm:
            await _drain(engine.convert(file, target, ConvertOptions()), output)
            return None
        # After analysis the first pass's plan is known: time the conversion alone.
        await engine.profile(file)
        started = time.perf_counter()
        await _drain(engine.convert(file, target, ConvertOptions()), output)
        return time.perf_counter() - started

    return asyncio.run(run())


def _engine_profile(directory: Path, name: str, fmt: FileFormat) -> None:
    engine = ArrowTableEngine(LocalFiles(directory))  # type: ignore[arg-type]
    asyncio.run(engine.profile(_file(directory, name, fmt)))


def _engine_preview(
    directory: Path, name: str, fmt: FileFormat, offset: int, *, warm: bool = False
) -> float:
    engine = ArrowTableEngine(LocalFiles(directory))  # type: ignore[arg-type]
    file = _file(directory, name, fmt)

    async def run() -> float:
        if warm:
            await engine.profile(file)
        # One small page first, so that lazy initialisation in pyarrow is not timed: the
        # page request alone, as a running server would serve it.
        await engine.preview(file, offset=0, limit=1)
        started = time.perf_counter()
        await engine.preview(file, offset=offset, limit=50)
        return time.perf_counter() - started

    return asyncio.run(run())


def _pyarrow_csv_to_parquet(directory: Path) -> None:
    reader = pacsv.open_csv(str(directory / "data.csv"))
    with pq.ParquetWriter(str(directory / "out.parquet"), reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def _pyarrow_parquet_to_csv(directory: Path) -> None:
    source = pq.ParquetFile(str(directory / "data.parquet"))
    with pacsv.CSVWriter(str(directory / "out.csv"), source.schema_arrow) as writer:
        for batch in source.iter_batches():
            writer.write_batch(batch)


def _row_loop_jsonl(directory: Path) -> None:
    # The per-row trap the issue measured, on the first million rows only.
    reader = pacsv.open_csv(str(directory / "data.csv"))
    done = 0
    with (directory / "out.jsonl").open("w") as out:
        for batch in reader:
            for row in batch.to_pylist():
                out.write(json.dumps(row, default=str) + "\n")
            done += batch.num_rows
            if done >= 1_000_000:
                return


def _xlsxwriter_loop(directory: Path) -> None:
    workbook = xlsxwriter.Workbook(str(directory / "out.xlsx"), {"constant_memory": True})
    sheet = workbook.add_worksheet()
    source = pq.ParquetFile(str(directory / "head.parquet"))
    row = 0
    for batch in source.iter_batches():
        for values in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            for col, value in enumerate(values):
                if value is not None:
                    if isinstance(value, str):
                        sheet.write_string(row, col, value)
                    elif isinstance(value, datetime):
                        sheet.write_datetime(row, col, value)
                    else:
                        sheet.write_number(row, col, value)
            row += 1
    workbook.close()


def _duck(sql: str) -> Callable[[Path], None]:
    def run(directory: Path) -> None:
        db = duckdb.connect()
        db.execute(f"SET memory_limit='1GB'; SET temp_directory='{directory}/duck.tmp'")
        db.execute(sql.format(d=directory)).fetchall()

    return run


CASES: dict[str, Callable[[Path], float | None]] = {
    "profile csv": lambda d: _engine_profile(d, "data.csv", FileFormat.CSV),
    "profile parquet": lambda d: _engine_profile(d, "data.parquet", FileFormat.PARQUET),
    "duckdb SUMMARIZE csv": _duck("SUMMARIZE SELECT * FROM read_csv('{d}/data.csv')"),
    "duckdb SUMMARIZE parquet": _duck("SUMMARIZE SELECT * FROM '{d}/data.parquet'"),
    "csv→parquet engine": lambda d: _engine_convert(
        d, "data.csv", FileFormat.CSV, FileFormat.PARQUET
    ),
    "csv→parquet pyarrow loop": _pyarrow_csv_to_parquet,
    "csv→parquet duckdb COPY": _duck(
        "COPY (SELECT * FROM read_csv('{d}/data.csv')) TO '{d}/out.parquet' (FORMAT parquet)"
    ),
    "csv→parquet engine, after analysis": lambda d: _engine_convert(
        d, "data.csv", FileFormat.CSV, FileFormat.PARQUET, warm=True
    ),
    "csv→jsonl engine": lambda d: _engine_convert(d, "data.csv", FileFormat.CSV, FileFormat.JSONL),
    "csv→jsonl engine, after analysis": lambda d: _engine_convert(
        d, "data.csv", FileFormat.CSV, FileFormat.JSONL, warm=True
    ),
    "csv→jsonl duckdb COPY": _duck(
        "COPY (SELECT * FROM read_csv('{d}/data.csv')) TO '{d}/out.jsonl' (FORMAT json)"
    ),
    "csv→jsonl per-row loop (1M rows)": _row_loop_jsonl,
    "parquet→csv engine": lambda d: _engine_convert(
        d, "data.parquet", FileFormat.PARQUET, FileFormat.CSV
    ),
    "parquet→csv pyarrow loop": _pyarrow_parquet_to_csv,
    "parquet→csv duckdb COPY": _duck("COPY '{d}/data.parquet' TO '{d}/out.csv' (HEADER)"),
    "parquet→xlsx engine (≤1,048,575 rows)": lambda d: _engine_convert(
        d, "head.parquet", FileFormat.PARQUET, FileFormat.XLSX
    ),
    "parquet→xlsx xlsxwriter loop": _xlsxwriter_loop,
    "preview parquet first page": lambda d: _engine_preview(
        d, "data.parquet", FileFormat.PARQUET, 0
    ),
    "preview parquet row 5,000,000": lambda d: _engine_preview(
        d, "data.parquet", FileFormat.PARQUET, 5_000_000
    ),
    "preview csv first page, before analysis": lambda d: _engine_preview(
        d, "data.csv", FileFormat.CSV, 0
    ),
    "preview csv row 5,000,000, before analysis": lambda d: _engine_preview(
        d, "data.csv", FileFormat.CSV, 5_000_000
    ),
    "preview csv row 5,000,000, after analysis": lambda d: _engine_preview(
        d, "data.csv", FileFormat.CSV, 5_000_000, warm=True
    ),
}


def _peak_rss_kib() -> int:
    # VmHWM is this address space's own high-water mark; ru_maxrss would carry over the
    # parent's peak across fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_case(name: str, directory: Path) -> dict[str, Any]:
    """Run one case in this process and report its time and this process's peak RSS."""
    started = time.perf_counter()
    timed = CASES[name](directory)
    seconds = timed if timed is not None else time.perf_counter() - started
    peak = _peak_rss_kib() / 1024
    return {"case": name, "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data")
    parser.add_argument("--case", default=None, help="run one case (used internally)")
    parser.add_argument(
        "--only",
        default=None,
        help="run the cases whose name contains this, or is it exactly if it starts with '=' "
        "(several, comma-separated)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="generate the data into this directory once and reuse it on later runs "
        "with the same --rows (delete it yourself when done)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every case this many times, in turns"
    )
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.dir)))
        return
    if args.keep is not None:
        _run_all(_kept(args.keep, args.rows), args.only, args.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="datadl-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        generate(directory, args.rows)
        _report_generated(directory, args.rows, time.perf_counter() - started)
        _run_all(directory, args.only, args.repeat)


def _kept(directory: Path, rows: int) -> Path:
    """The data of ``rows`` rows in ``directory``, generated there unless already there."""
    marker = directory / "rows"
    if marker.exists() and marker.read_text().strip() == str(rows):
        print(f"reusing the {rows:,} rows generated in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    generate(directory, rows)
    marker.write_text(str(rows))
    _report_generated(directory, rows, time.perf_counter() - started)
    return directory


def _report_generated(directory: Path, rows: int, seconds: float) -> None:
    size = (directory / "data.csv").stat().st_size
    print(
        f"generated {rows:,} rows: csv {size / 2**20:,.0f} MiB, parquet "
        f"{(directory / 'data.parquet').stat().st_size / 2**20:,.0f} MiB in "
        f"{seconds:.1f} s on {os.cpu_count()} cpus, {datetime.now(UTC):%Y-%m-%d}"
    )


def _matches(part: str, name: str) -> bool:
    # "=name" asks for that case alone; anything else for every case containing it.
    return part[1:] == name if part.startswith("=") else part in name


def _run_all(directory: Path, only: str | None, repeat: int = 1) -> None:
    """Run the cases, each ``repeat`` times in turns (so that load from other work on the
    machine falls on every case alike), and print each case's median and best time."""
    wanted = [part for part in (only or "").split(",") if part]
    names = [name for name in CASES if not wanted or any(_matches(part, name) for part in wanted)]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(names, 0.0)
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for name in names:
            if name in failed:
                continue
            # The script runs itself, with arguments it built: no untrusted input.
            result = subprocess.run(  # noqa: S603
                [sys.executable, __file__, "--case", name, "--dir", str(directory)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                failed[name] = str(result.stderr.strip().splitlines()[-1:])
                continue
            line = json.loads(result.stdout.strip().splitlines()[-1])
            seconds[name].append(line["seconds"])
            peaks[name] = max(peaks[name], line["peak_rss_mb"])
    print(f"{'case':48} {'seconds':>9} {'best':>9} {'peak RSS MB':>12}   (median of {repeat})")
    for name in names:
        if name in failed:
            print(f"{name:48} failed: {failed[name]}")
            continue
        times = seconds[name]
        print(
            f"{name:48} {statistics.median(times):>9.3f} {min(times):>9.3f} {peaks[name]:>12.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
