"""The datadl server next to nginx: download throughput, range latency, metadata RPS, peak RSS."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

BLOCK = 1 << 20
MB = 1_000_000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
API = "/api/v1"

# The anchor for the metadata GET: the smallest aiohttp JSON handler there is, in its own
# process, answering the same body as datadl's dataset endpoint.
_BARE_AIOHTTP = """
import json, sys
from aiohttp import web
body = json.loads(sys.argv[2])
async def meta(request):
    return web.json_response(body)
app = web.Application()
app.router.add_get("/meta", meta)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

# One worker process, as `datadl serve` is one process; sendfile on, and otherwise nginx's
# defaults. tcp_nopush stays off (its default): with it on, 64 KiB answers on loopback wait
# for a delayed ACK (measured p50 44 ms instead of 0.07 ms), an anchor that would flatter us.
_NGINX_CONF = """daemon off;
worker_processes {workers};
{user}pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/json json; text/csv csv; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def parse_size(text: str) -> int:
    """Bytes from ``1G``, ``256M``, ``64K`` or a plain number (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    return int(float(text.removesuffix(unit)) * _UNITS[unit])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_data(path: Path, size: int, seed: int) -> None:
    """A CSV head (so that publishing accepts it) and then 16 random 1 MiB blocks, cycled.

    The head makes the sniffer see a table; the analysis then fails fast on the random
    bytes, so no background profiling runs while the benchmark measures.
    """
    rng = random.Random(seed)
    head = b"id,value\n" + b"".join(b"%d,%d\n" % (i, rng.randrange(10**9)) for i in range(70_000))
    pool = [rng.randbytes(BLOCK) for _ in range(16)]
    with path.open("wb") as f:
        written = f.write(head[: min(len(head), size)])
        i = 0
        while written < size:
            written += f.write(pool[i % 16][: size - written])
            i += 1


def wait_http(
    url: str, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            out = subprocess.run(  # noqa: S603 - curl on a URL we built
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],  # noqa: S607
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.stdout.strip() not in ("", "000"):
                return
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)


@contextmanager
def child(args: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with its output in ``log``, terminated (then killed) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # noqa: S603
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- memory -----------------------------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux ``clear_refs`` value 5)."""
    with suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    return _status(pid, "VmHWM")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far (Linux ``/proc``)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


# --- clients ----------------------------------------------------------------------------------


def curl_download(urls: list[str], headers: dict[str, str]) -> tuple[float, int]:
    """Fetch every URL at once with one ``curl --parallel``, discarding the bytes.

    Returns (wall seconds, bytes received); any status but 200 is an error. One client
    process keeps the clients' CPU share the same for every server.
    """
    args = ["curl", "-s", "--parallel", "--parallel-max", str(len(urls)), "--parallel-immediate"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args += ["-w", "%{http_code} %{size_download}\\n"]
    for url in urls:
        args += ["-o", "/dev/null", url]
    began = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True)  # noqa: S603
    seconds = time.perf_counter() - began
    total = 0
    pairs = out.stdout.split()
    for status, size in zip(pairs[::2], pairs[1::2], strict=True):
        if status != "200":
            raise RuntimeError(f"download answered {status}: {out.stdout!r}")
        total += int(size)
    return seconds, total


def range_latencies(
    url: str, headers: dict[str, str], size: int, count: int, length: int, seed: int, work: Path
) -> list[float]:
    """Seconds per ranged GET of ``length`` bytes at random offsets, sequential, keep-alive.

    One curl reads a config of ``count`` transfers separated by ``next`` (one connection,
    kept alive); each reports its own ``time_total``. The first 20 warm up and are dropped.
    """
    rng = random.Random(seed)
    blocks = []
    for _ in range(count + 20):
        start = rng.randrange(0, size - length)
        lines = [f'url = "{url}"', f'range = "{start}-{start + length - 1}"']
        lines += ['output = "/dev/null"', "silent"]
        lines += ['write-out = "%{http_code} %{size_download} %{time_total}\\n"']
        lines += [f'header = "{name}: {value}"' for name, value in headers.items()]
        blocks.append("\n".join(lines))
    config = work / "ranges.curl"
    config.write_text("\nnext\n".join(blocks) + "\n")
    out = subprocess.run(  # noqa: S603
        ["curl", "-K", str(config)],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    times = []
    for status, got, seconds in zip(out[::3], out[1::3], out[2::3], strict=True):
        if status != "206" or int(got) != length:
            raise RuntimeError(f"range answered {status} with {got} bytes")
        times.append(float(seconds))
    return times[20:]


def wrk_rps(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    """Requests per second that wrk (one thread) gets from ``url``; errors fail the step."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(  # noqa: S603
        [*args, url], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no requests/sec in wrk's output:\n{out}")
    return float(match.group(1))


async def aiohttp_rps(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    """The same as ``wrk_rps`` with an aiohttp client, for machines without wrk."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            done += 1

    connector = aiohttp.TCPConnector(limit=connections)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return done / (time.perf_counter() - began)


def rps(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    if shutil.which("wrk"):
        return wrk_rps(url, headers, seconds, connections)
    return asyncio.run(aiohttp_rps(url, headers, seconds, connections))


# --- the servers ------------------------------------------------------------------------------


class Bench:
    """The servers under test, their URLs and what each step measured."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: ExitStack) -> None:
        self.args = args
        self.work = work
        self.stack = stack
        self.results: dict[str, list[Any]] = {}
        self.nginx_pids: list[int] = []
        self.rss_start = 0
        self.rss_setup = 0

    def start(self) -> None:
        args, work = self.args, self.work
        root = work / "nginx-root"
        root.mkdir()
        print(
            f"writing {args.size / BLOCK:.0f} MiB and {args.small_size / BLOCK:.0f} MiB of data",
            file=sys.stderr,
        )
        write_data(root / "big.csv", args.size, 1)
        write_data(root / "small.csv", args.small_size, 2)

        port = free_port()
        data_dir = work / "datadl-data"
        serve = [sys.executable, "-c", "from datadl.entrypoints.cli import main; main()"]
        serve += ["serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
        self.datadl = self.stack.enter_context(child(serve, work / "datadl-setup.log"))
        self.datadl_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.datadl_url}/healthz", process=self.datadl)
        while not (data_dir / "demo-keys.json").exists():
            time.sleep(0.1)
        keys = json.loads((data_dir / "demo-keys.json").read_text())
        self.auth = {"Authorization": f"Bearer {keys['owner']}"}
        self.big_id, self.small_id, meta = asyncio.run(self._publish(keys["organization"], root))
        (root / "meta.json").write_text(json.dumps(meta))
        # Measured on a restarted server, as a deployment runs: the demo's seeding (pyarrow
        # analyses) and the uploads leave memory in the allocators of the first process.
        self.rss_setup = _status(self.datadl.pid, "VmRSS")
        self.datadl.terminate()
        self.datadl.wait(30)
        self.datadl = self.stack.enter_context(child(serve, work / "datadl.log"))
        wait_http(f"{self.datadl_url}/healthz", process=self.datadl)

        nginx_port = free_port()
        prefix = work / "nginx"
        prefix.mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = _NGINX_CONF.format(
            workers=args.nginx_workers, user=user, prefix=prefix, port=nginx_port, root=root
        )
        (prefix / "nginx.conf").write_text(conf)
        nginx = [args.nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        nginx += ["-e", str(prefix / "nginx-error.log")]
        process = self.stack.enter_context(child(nginx, work / "nginx.log"))
        self.nginx_url = f"http://127.0.0.1:{nginx_port}"
        wait_http(f"{self.nginx_url}/meta.json", process=process)
        self.nginx_pids = [process.pid, *children_of(process.pid)]

        bare_port = free_port()
        bare = [sys.executable, "-c", _BARE_AIOHTTP, str(bare_port), json.dumps(meta)]
        process = self.stack.enter_context(child(bare, work / "bare.log"))
        self.bare_url = f"http://127.0.0.1:{bare_port}"
        wait_http(f"{self.bare_url}/meta", process=process)

    async def _publish(self, organization: str, root: Path) -> tuple[str, str, dict[str, Any]]:
        policy = {
            "allowed_formats": None,
            "max_download_bytes": None,
            "allow_anonymous": False,
            "require_token": False,
            "rate_limit": None,
            "quota": {"user": None, "organization": None},
        }
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(
            self.datadl_url, headers=self.auth, timeout=timeout
        ) as session:
            url = f"{API}/organizations/{organization}/download-policy"
            async with session.put(url, json=policy) as response:
                response.raise_for_status()
            ids = []
            for name in ("big", "small"):
                query = {
                    "organization": organization,
                    "slug": f"bench-{name}",
                    "filename": f"{name}.csv",
                    "format": "csv",
                    "visibility": "organization",
                }
                with (root / f"{name}.csv").open("rb") as f:
                    async with session.post(f"{API}/datasets", params=query, data=f) as response:
                        if response.status != 201:
                            raise RuntimeError(
                                f"publish: {response.status} {await response.text()}"
                            )
                        ids.append((await response.json())["id"])
            # The analysis fails fast on the random bytes; wait so that it is not measured.
            for _ in range(600):
                async with session.get(f"{API}/datasets/{ids[1]}") as response:
                    meta = await response.json()
                async with session.get(f"{API}/datasets/{ids[0]}") as response:
                    big = await response.json()
                if meta["status"] != "analyzing" and big["status"] != "analyzing":
                    break
                await asyncio.sleep(0.1)
        return ids[0], ids[1], meta

    def download_url(self, server: str, name: str) -> str:
        if server == "nginx":
            return f"{self.nginx_url}/{name}.csv"
        dataset = self.big_id if name == "big" else self.small_id
        return f"{self.datadl_url}{API}/datasets/{dataset}/download"

    def record(self, key: str, value: Any) -> None:
        self.results.setdefault(key, []).append(value)

    # --- steps ---

    def _download(self, step: str, server: str, urls: list[str], expected: int) -> None:
        pids = [self.datadl.pid] if server == "datadl" else self.nginx_pids
        if server == "datadl":
            reset_peak(self.datadl.pid)
        cpu = cpu_seconds(pids)
        seconds, got = curl_download(urls, self.auth)
        cpu = cpu_seconds(pids) - cpu
        if got != expected:
            raise RuntimeError(f"{server} sent {got} of {expected} bytes")
        self.record(f"{step} {server}", got / seconds / MB)
        # The server's CPU per GB sent: a cost that the other work on the machine barely moves.
        self.record(f"{step} cpu {server}", cpu / (got / 1e9))
        if server == "datadl":
            self.record("rss", peak_rss(self.datadl.pid))

    def single(self, server: str) -> None:
        self._download("single", server, [self.download_url(server, "big")], self.args.size)

    def many(self, server: str) -> None:
        urls = [self.download_url(server, "small")] * self.args.clients
        self._download("many", server, urls, self.args.small_size * self.args.clients)

    def ranges(self, server: str, seed: int) -> None:
        times = range_latencies(
            self.download_url(server, "big"),
            self.auth,
            self.args.size,
            self.args.ranges,
            self.args.range_size,
            seed,
            self.work,
        )
        times.sort()
        p50 = statistics.median(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        self.record(f"range {server}", (p50 * 1000, p99 * 1000))

    def metadata(self, server: str) -> None:
        url = {
            "nginx": f"{self.nginx_url}/meta.json",
            "bare": f"{self.bare_url}/meta",
            "datadl": f"{self.datadl_url}{API}/datasets/{self.small_id}",
        }[server]
        self.record(
            f"meta {server}", rps(url, self.auth, self.args.duration, self.args.connections)
        )


def table(bench: Bench) -> str:
    """The Markdown table: best of each side, the ratio of those, and each round's own ratio."""
    args, r = bench.args, bench.results
    size, small = f"{args.size / BLOCK:.0f} MiB", f"{args.small_size / BLOCK:.0f} MiB"
    rows: list[tuple[str, ...]] = []

    def per_round(ours: list[float], anchor: list[float], digits: int = 2) -> str:
        return " / ".join(f"{o / a:.{digits}f}" for o, a in zip(ours, anchor, strict=True))

    def ratio_row(
        name: str, unit: str, anchor_name: str, key: str, ours_key: str, target: float
    ) -> None:
        anchor, ours = max(r[key]), max(r[ours_key])
        ratio = ours / anchor
        rows.append(
            (name, f"{anchor_name} {anchor:,.0f}", f"{ours:,.0f}", unit, f"{ratio:.2f}",
             per_round(r[ours_key], r[key]), f"≥ {target}× {anchor_name}",
             "yes" if ratio >= target else "**no**")
        )  # fmt: skip

    ratio_row(f"1 client, {size}", "MB/s", "nginx", "single nginx", "single datadl", 0.9)
    ratio_row(
        f"{args.clients} clients, {small} each (aggregate)",
        "MB/s",
        "nginx",
        "many nginx",
        "many datadl",
        0.9,
    )
    for step, name in (("single", "1 client"), ("many", f"{args.clients} clients")):
        anchor_cpu, ours_cpu = min(r[f"{step} cpu nginx"]), min(r[f"{step} cpu datadl"])
        rows.append(
            (f"server CPU per GB sent, {name} (lower is better)", f"nginx {anchor_cpu:.2f}",
             f"{ours_cpu:.2f}", "CPU s/GB", f"{ours_cpu / anchor_cpu:.2f}",
             per_round(r[f"{step} cpu datadl"], r[f"{step} cpu nginx"]), "", "")
        )  # fmt: skip
    kib = args.range_size // 1024
    for i, name in ((0, "p50"), (1, "p99")):
        anchor_ms = min(v[i] for v in r["range nginx"])
        ours_ms = min(v[i] for v in r["range datadl"])
        target, met = ("< 2 ms", "yes" if ours_ms < 2 else "**no**") if i == 0 else ("", "")
        rows.append(
            (f"range {kib} KiB {name} (best round)", f"nginx {anchor_ms:.2f}", f"{ours_ms:.2f}",
             "ms", f"{ours_ms / anchor_ms:.0f}",
             per_round([v[i] for v in r["range datadl"]], [v[i] for v in r["range nginx"]], 0),
             target, met)
        )  # fmt: skip
    ratio_row("metadata GET with API key", "req/s", "bare aiohttp", "meta bare", "meta datadl", 0.4)
    meta_nginx, meta_ours = max(r["meta nginx"]), max(r["meta datadl"])
    rows.append(
        ("metadata GET next to nginx (a static file)", f"nginx {meta_nginx:,.0f}",
         f"{meta_ours:,.0f}", "req/s", f"{meta_ours / meta_nginx:.2f}",
         per_round(r["meta datadl"], r["meta nginx"]), "", "")
    )  # fmt: skip
    peak = max(r["rss"]) / MB
    rows.append(
        ("datadl peak RSS during the downloads", f"at start {bench.rss_start / MB:.0f}",
         f"{peak:.0f}", "MB", "", "", "< 300 MB", "yes" if peak < 300 else "**no**")
    )  # fmt: skip
    rows.append(
        ("datadl RSS after seeding and publishing (before the restart)", "",
         f"{bench.rss_setup / MB:.0f}", "MB", "", "", "", "")
    )  # fmt: skip
    head = ("measure", "anchor (best)", "datadl (best)", "unit", "× anchor", "× per round",
            "target", "met")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: | ---: | --- | ---: | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="big file")
    parser.add_argument(
        "--small-size", type=parse_size, default=parse_size("100M"), help="file of the clients"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent downloads")
    parser.add_argument("--ranges", type=int, default=500, help="ranged requests per round")
    parser.add_argument("--range-size", type=parse_size, default=parse_size("64K"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per RPS step")
    parser.add_argument("--connections", type=int, default=32, help="connections per RPS step")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each step keeps its best")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument(
        "--nginx-workers", default="1", help="nginx worker_processes (1: one process, as datadl)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="256 MiB, 32 MiB, 200 ranges, 2 s RPS, 1 round"
    )
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size = min(args.size, parse_size("256M"))
        args.small_size = min(args.small_size, parse_size("32M"))
        args.ranges, args.duration, args.rounds = min(args.ranges, 200), 2.0, 1
    with ExitStack() as stack:
        if args.dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="server-bench-")))
        else:
            work = args.dir
            work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, work, stack)
        bench.start()
        # Both servers read the files once, so every round reads from the page cache.
        for server in ("nginx", "datadl"):
            curl_download([bench.download_url(server, "big")], bench.auth)
            curl_download([bench.download_url(server, "small")], bench.auth)
        bench.rss_start = _status(bench.datadl.pid, "VmRSS")
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}", file=sys.stderr)
            order = ("nginx", "datadl") if n % 2 == 0 else ("datadl", "nginx")
            for server in order:
                bench.single(server)
            for server in order:
                bench.many(server)
            for server in order:
                bench.ranges(server, seed=n)
            for server in (
                ("nginx", "bare", "datadl") if n % 2 == 0 else ("datadl", "bare", "nginx")
            ):
                bench.metadata(server)
            for key, values in sorted(bench.results.items()):
                print(f"  {key}: {values[-1]}", file=sys.stderr)
        print()
        print(table(bench))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
