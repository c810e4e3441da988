"""Write, full-read and ranged-read throughput of FsspecBlobStore next to plain file loops."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

from datadl.adapters.storage import FsspecBlobStore

BLOCK = 1 << 20
Step = tuple[str, str, int, Callable[[], Awaitable[Any]]]
ORDER = ("plain", "local", "memory", "s3")
OPERATIONS = ("write", "full read", "ranged read")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# moto runs in its own process so that its copy of the data and its threads stay out of
# the numbers measured here.
_MOTO_CHILD = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


def parse_size(text: str) -> int:
    """Bytes from ``1G``, ``256M``, ``64K`` or a plain number (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    return int(float(text.removesuffix(unit)) * _UNITS[unit])


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 endpoint in a child process, stopped on exit."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _MOTO_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.stdin.close()
        process.wait(timeout=30)
        process.stdout.close()


class Peak:
    """Peak RSS of this process over a step, and its growth over the RSS at the start.

    Linux resets the peak (VmHWM) for each step; elsewhere the lifetime peak is used.
    """

    def __enter__(self) -> Peak:
        with suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self.start = _status("VmRSS:") or _vm_hwm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = _vm_hwm()
        self.growth = max(0, self.bytes - self.start)


def _status(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _vm_hwm() -> int:
    return _status("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Bench:
    """One benchmark run: a data pattern, the ranges to read and the rows measured."""

    def __init__(self, size: int, chunk_size: int, range_size: int, repeat: int) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.repeat = repeat
        # A pool of random blocks, cycled: generating the data must cost nothing.
        self.pool = [os.urandom(BLOCK) for _ in range(16)]
        rng = random.Random(42)
        count = max(1, size // range_size)
        self.ranges = [
            (start, min(size, start + range_size))
            for start in (rng.randrange(max(1, size - range_size)) for _ in range(count))
        ]
        self.ranged_bytes = sum(end - start for start, end in self.ranges)
        self.rows: list[tuple[str, str, float, float, float]] = []
        self.anchor: dict[str, float] = {}

    def blocks(self) -> Iterator[bytes]:
        """The data, BLOCK bytes at a time."""
        for index in range(self.size // BLOCK):
            yield self.pool[index % len(self.pool)]
        if self.size % BLOCK:
            yield self.pool[0][: self.size % BLOCK]

    async def stream(self) -> AsyncIterator[bytes]:
        """The data as an async upload stream."""
        for block in self.blocks():
            yield block

    async def measure(self, steps: list[Step]) -> None:
        """Run the steps in rounds, so that plain loops and stores share the same noise.

        Each step keeps its best throughput over ``repeat`` rounds and its highest RSS.
        """
        best: dict[tuple[str, str], float] = {}
        peaks: dict[tuple[str, str], int] = {}
        growths: dict[tuple[str, str], int] = {}
        for _ in range(self.repeat):
            for backend, operation, nbytes, run in steps:
                with Peak() as step:
                    started = time.perf_counter()
                    await run()
                    elapsed = time.perf_counter() - started
                name = (backend, operation)
                best[name] = max(best.get(name, 0.0), nbytes / elapsed / 1e6)
                peaks[name] = max(peaks.get(name, 0), step.bytes)
                growths[name] = max(growths.get(name, 0), step.growth)
                print(
                    f"  {backend:6} {operation:12} {nbytes / elapsed / 1e6:9.0f} MB/s",
                    file=sys.stderr,
                    flush=True,
                )
        for backend, operation, _, _ in steps:
            speed = best[(backend, operation)]
            if backend == "plain":
                self.anchor[operation] = speed
            name = (backend, operation)
            self.rows.append(
                (backend, operation, speed, peaks[name] / 2**20, growths[name] / 2**20)
            )

    def table(self) -> str:
        """The rows as a Markdown table, each ratio against the plain loop of its operation."""
        lines = [
            "| backend | operation | MB/s | × plain loop | peak RSS MiB | RSS growth MiB |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for backend, operation, speed, peak, growth in self.rows:
            ratio = speed / self.anchor[operation]
            cells = (
                backend,
                operation,
                f"{speed:.0f}",
                f"{ratio:.2f}",
                f"{peak:.0f}",
                f"{growth:.0f}",
            )
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def plain_steps(bench: Bench, path: Path) -> dict[str, Step]:
    """The anchor: open().write() and open().read() loops on a local file."""

    def write() -> None:
        with path.open("wb") as file:
            for block in bench.blocks():
                file.write(block)
            file.flush()
            os.fsync(file.fileno())  # the store makes its files durable too

    def read_full() -> None:
        with path.open("rb") as file:
            while file.read(bench.chunk_size):
                pass

    def read_ranges() -> None:
        with path.open("rb") as file:
            for start, end in bench.ranges:
                file.seek(start)
                remaining = end - start
                while remaining > 0:
                    remaining -= len(file.read(min(bench.chunk_size, remaining)))

    return {
        "write": ("plain", "write", bench.size, lambda: asyncio.to_thread(write)),
        "full read": ("plain", "full read", bench.size, lambda: asyncio.to_thread(read_full)),
        "ranged read": (
            "plain",
            "ranged read",
            bench.ranged_bytes,
            lambda: asyncio.to_thread(read_ranges),
        ),
    }


def store_steps(bench: Bench, name: str, store: FsspecBlobStore, key: str) -> dict[str, Step]:
    """Write, full read and ranged reads through one store."""

    async def write() -> None:
        await store.write(key, bench.stream())

    async def read_full() -> None:
        async for _ in store.read(key):
            pass

    async def read_ranges() -> None:
        for start, end in bench.ranges:
            async for _ in store.read(key, start, end):
                pass

    return {
        "write": (name, "write", bench.size, write),
        "full read": (name, "full read", bench.size, read_full),
        "ranged read": (name, "ranged read", bench.ranged_bytes, read_ranges),
    }


@asynccontextmanager
async def open_stores(
    backends: list[str], folder: str, chunk_size: int
) -> AsyncIterator[dict[str, FsspecBlobStore]]:
    """The stores to measure, with the moto server behind the S3 one."""
    stores: dict[str, FsspecBlobStore] = {}
    if "file" in backends:
        stores["local"] = FsspecBlobStore.from_url(f"file://{folder}/store", chunk_size=chunk_size)
    if "memory" in backends:
        url = f"memory://bench-{uuid.uuid4().hex}"
        stores["memory"] = FsspecBlobStore.from_url(url, chunk_size=chunk_size)
    if "s3" not in backends:
        yield stores
        return
    with moto_server() as endpoint:
        import boto3

        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
            region_name="us-east-1",
        )
        admin.create_bucket(Bucket="bench")
        admin.close()
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        async with FsspecBlobStore.from_url(
            "s3://bench", chunk_size=chunk_size, s3_options={**options, "region": "us-east-1"}
        ) as s3:
            stores["s3"] = s3
            yield stores


async def main(args: argparse.Namespace) -> None:
    bench = Bench(args.size, args.chunk_size, args.range_size, args.repeat)
    key = f"bench/{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        async with open_stores(args.backends, folder, args.chunk_size) as stores:
            suites = [plain_steps(bench, Path(folder) / "plain.bin")]
            suites += [store_steps(bench, name, store, key) for name, store in stores.items()]
            # Writes first (reads need the data), then reads with plain and store in turn.
            await bench.measure([suite["write"] for suite in suites])
            await bench.measure(
                [suite[op] for suite in suites for op in ("full read", "ranged read")]
            )
            for store in stores.values():
                await store.delete(key)
    bench.rows.sort(key=lambda row: (ORDER.index(row[0]), OPERATIONS.index(row[1])))
    print(
        f"size {bench.size / (1 << 20):.0f} MiB, chunk {bench.chunk_size >> 10} KiB, "
        f"{len(bench.ranges)} ranges of {args.range_size >> 20} MiB, best of {bench.repeat}\n"
    )
    print(bench.table())
    if "file" in args.backends:
        target = next(r[2] for r in bench.rows if r[:2] == ("local", "ranged read"))
        ratio = target / bench.anchor["full read"]
        verdict = "met" if ratio >= 0.8 else "MISSED"
        print(f"\nlocal ranged read / plain read loop = {ratio:.2f} (target ≥ 0.8: {verdict})")
        # The plain ranged loop keeps one descriptor for every range; the store opens the
        # file for each range, as a server does for each request.
        ranged = target / bench.anchor["ranged read"]
        print(f"local ranged read / plain ranged loop on one descriptor = {ranged:.2f}")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: sizes accept K, M and G suffixes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="file size (1G)")
    parser.add_argument("--chunk-size", type=parse_size, default=4 << 20, help="store chunk (4M)")
    parser.add_argument("--range-size", type=parse_size, default=16 << 20, help="range (16M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; best is kept")
    parser.add_argument(
        "--backends",
        type=lambda text: text.split(","),
        default=["file", "memory", "s3"],
        help="comma-separated: file,memory,s3",
    )
    parser.add_argument("--dir", default=None, help="folder for the local files (a temp dir)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(arguments()))
