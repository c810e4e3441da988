"""Real HTTP clients against a real ``datadl serve --demo`` process.

curl, wget and aria2c run as programs; fsspec, pyarrow and pandas as a data scientist uses
them; the RFC 9110 range and conditional cases go over a plain HTTP/1.1 connection. Each
test ends with bytes (or frames) equal to the source.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.e2e.real_server import (
    API,
    RealServer,
    file_sha256,
    running_server,
    sha256,
)

pytestmark = pytest.mark.slow

SAMPLES = resources.files("datadl.samples")
PENGUINS = SAMPLES.joinpath("penguins.csv").read_bytes()
CARS = SAMPLES.joinpath("cars.json").read_bytes()


#: About 46 MB of CSV: more than loopback's socket buffers hold (4 MiB to send, a few MiB
#: to receive for a slow reader), so a transfer cut by the client is cut at the server too;
#: a file that fits in the buffers is all "sent" before a slow client reads a byte.
BIG_ROWS = 1_000_000


def _big_csv(rows: int = BIG_ROWS) -> bytes:
    """A CSV big enough that a rate-limited transfer is cut mid-way at both ends."""
    rng = random.Random(20261126)
    out = io.StringIO()
    out.write("id,name,value,flag,day\n")
    for i in range(rows):
        out.write(
            f"{i},name-{rng.randrange(10**6)},{rng.random() * 1000:.6f},"
            f"{rng.random() < 0.5},2024-01-{1 + i % 28:02d}\n"
        )
    return out.getvalue().encode()


def _parquet() -> tuple[bytes, Any]:
    """A Parquet file with many row groups, and the table it holds."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = random.Random(7)
    n = 60_000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "value": pa.array([rng.random() for _ in range(n)], pa.float64()),
            "label": pa.array([f"label-{rng.randrange(50_000)}" for _ in range(n)]),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=6_000, compression="none")
    return sink.getvalue(), table


@attrs.frozen
class Published:
    id: str
    data: bytes

    @property
    def sha256(self) -> str:
        return sha256(self.data)


@attrs.define
class World:
    server: RealServer
    big: Published
    parquet: Published
    parquet_table: Any
    penguins: Published
    cars: Published


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_server(tmp_path_factory.mktemp("real-server")) as server:
        server.open_policy()
        samples = server.datasets()
        big_data = _big_csv()
        big = server.publish(big_data, filename="big.csv", slug="big", content_type="text/csv")
        parquet_data, table = _parquet()
        parquet = server.publish(
            parquet_data,
            filename="numbers.parquet",
            slug="numbers",
            content_type="application/vnd.apache.parquet",
        )
        yield World(
            server=server,
            big=Published(big["id"], big_data),
            parquet=Published(parquet["id"], parquet_data),
            parquet_table=table,
            penguins=Published(samples["penguins"]["id"], PENGUINS),
            cars=Published(samples["cars"]["id"], CARS),
        )


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (CI installs it through .ci/run)")
    return path


def _run(command: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _curl(world: World, *args: str, who: str | None = "owner") -> subprocess.CompletedProcess[str]:
    """curl, silent but showing errors, with the owner's key unless ``who`` is None."""
    auth = ["-H", world.server.auth_header(who)] if who is not None else []
    return _run([_need("curl"), "-sS", *auth, *args])


def _status(result: subprocess.CompletedProcess[str]) -> int:
    """The status ``-w '%{http_code}'`` wrote last on stdout."""
    return int(result.stdout.strip()[-3:])


def _headers(text: str) -> dict[str, str]:
    """The last header block of ``curl -I``/``-D -`` output, names lower-cased."""
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    lines = blocks[-1].splitlines()
    assert lines[0].startswith("HTTP/")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    headers[":status"] = lines[0].split()[1]
    return headers


# --- curl ---------------------------------------------------------------------------------


def test_curl_head_shows_the_download_headers(world: World) -> None:
    url = world.server.download_url(world.big.id)
    result = _curl(world, "-I", url)
    assert result.returncode == 0, result.stderr
    headers = _headers(result.stdout)
    assert headers[":status"] == "200"
    assert int(headers["content-length"]) == len(world.big.data)
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    assert world.big.sha256[:32] in headers["etag"]
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-disposition"].startswith("attachment;")
    assert 'filename="big.csv"' in headers["content-disposition"]
    assert "filename*=UTF-8''big.csv" in headers["content-disposition"]
    assert headers["content-type"].startswith("text/csv")
    assert "last-modified" in headers


def test_curl_range_fetches_the_first_hundred_bytes(world: World, tmp_path: Path) -> None:
    out = tmp_path / "first100"
    result = _curl(
        world,
        "-r",
        "0-99",
        "-o",
        str(out),
        "-D",
        "-",
        "-w",
        "%{http_code}",
        world.server.download_url(world.big.id),
    )
    assert result.returncode == 0, result.stderr
    assert _status(result) == 206
    assert f"content-range: bytes 0-99/{len(world.big.data)}" in result.stdout.lower()
    assert out.read_bytes() == world.big.data[:100]


def test_curl_full_download_is_recorded_completed(world: World, tmp_path: Path) -> None:
    """curl hangs up as soon as it has the last byte; the record still ends completed.

    A quota on the dataset makes every download settle its reservation in the database
    after the last byte, which is when curl has already gone.
    """
    policy = f"{API}/datasets/{world.penguins.id}/download-policy"
    quota = {"quota": {"user": {"bytes": 10**12, "downloads": None, "window": "day"}}}
    reply = world.server.request("PUT", policy, json_body=quota)
    assert reply.status == 200, reply.body
    try:
        _download_with_curl_five_times(world, tmp_path)
    finally:
        cleared = world.server.request("PUT", policy, json_body={})
        assert cleared.status == 200, cleared.body


def _download_with_curl_five_times(world: World, tmp_path: Path) -> None:
    for attempt in range(5):
        out = tmp_path / f"penguins-{attempt}.csv"
        result = _curl(
            world, "-D", "-", "-o", str(out), world.server.download_url(world.penguins.id)
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == world.penguins.data
        download_id = _headers(result.stdout)["x-download-id"]
        deadline = time.monotonic() + 10
        while True:
            found = list(world.server.history(world.penguins.id, limit=50))
            record = next((r for r in found if r["id"] == download_id), None)
            if (record and record["status"] != "started") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert record is not None, found
        assert (record["status"], record["bytes_sent"]) == ("completed", len(PENGUINS))


def _interrupt_then_resume(world: World, url: str, out: Path) -> tuple[int, int]:
    """Cut a rate-limited curl transfer with --max-time, then finish it with ``-C -``.

    Returns the partial size and the resume's status code.
    """
    # curl 7.88 does not throttle at all at rates of its buffer size (1M) and above.
    cut = _curl(world, "--limit-rate", "500K", "--max-time", "2", "-o", str(out), url)
    assert cut.returncode == 28, f"the transfer was not cut: {cut.returncode} {cut.stderr}"
    partial = out.stat().st_size if out.exists() else 0
    resumed = _curl(world, "-C", "-", "-o", str(out), "-w", "%{http_code}", url)
    assert resumed.returncode == 0, resumed.stderr
    return partial, _status(resumed)


def test_curl_resumes_an_interrupted_transfer(world: World, tmp_path: Path) -> None:
    out = tmp_path / "big.csv"
    partial, status = _interrupt_then_resume(world, world.server.download_url(world.big.id), out)
    size = len(world.big.data)
    assert 0 < partial < size
    assert status == 206
    assert file_sha256(out) == world.big.sha256
    # The audit trail: the cut transfer settled as aborted, the resume asked for the rest.
    deadline = time.monotonic() + 10
    while True:
        records = world.server.history(world.big.id, limit=10)
        aborted = [r for r in records if r["status"] == "aborted" and r["range"] is None]
        if aborted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert aborted, records
    assert partial <= aborted[0]["bytes_sent"] < size
    resumed = [r for r in records if r["range"] == f"bytes={partial}-"]
    assert resumed and resumed[0]["status"] == "completed", records
    assert resumed[0]["bytes_sent"] == size - partial


def test_curl_resumes_an_interrupted_converted_download(world: World, tmp_path: Path) -> None:
    """API.md: interrupted downloads resume in every format (jsonl here)."""
    url = world.server.download_url(world.big.id, format="jsonl")
    whole = tmp_path / "whole.jsonl"
    full = _curl(world, "-o", str(whole), "-w", "%{http_code}", url)
    assert full.returncode == 0, full.stderr
    assert _status(full) == 200
    out = tmp_path / "resumed.jsonl"
    partial, status = _interrupt_then_resume(world, url, out)
    assert 0 < partial < whole.stat().st_size
    assert status == 206
    assert file_sha256(out) == file_sha256(whole)
    lines = out.read_bytes().splitlines()
    assert len(lines) == BIG_ROWS
    source_rows = world.big.data.splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert str(first["id"]) == source_rows[1].split(b",")[0].decode()
    assert str(last["id"]) == source_rows[-1].split(b",")[0].decode()


def test_curl_if_modified_since(world: World, tmp_path: Path) -> None:
    url = world.server.download_url(world.penguins.id)
    out = tmp_path / "penguins.csv"
    later = _curl(world, "-z", "Sat, 01 Jan 2100 00:00:00 GMT", "-w", "%{http_code}", url)
    assert _status(later) == 304
    earlier = _curl(
        world, "-z", "Thu, 01 Jan 2015 00:00:00 GMT", "-o", str(out), "-w", "%{http_code}", url
    )
    assert _status(earlier) == 200
    assert out.read_bytes() == PENGUINS


def test_curl_etag_save_and_compare(world: World, tmp_path: Path) -> None:
    url = world.server.download_url(world.penguins.id)
    etag_file, out = tmp_path / "etag", tmp_path / "penguins.csv"
    first = _curl(world, "--etag-save", str(etag_file), "-o", str(out), "-w", "%{http_code}", url)
    assert _status(first) == 200, first.stderr
    assert out.read_bytes() == PENGUINS
    assert etag_file.read_text().strip().startswith('"')
    again = _curl(world, "--etag-compare", str(etag_file), "-w", "%{http_code}", url)
    assert _status(again) == 304


def test_curl_with_a_download_token_and_no_other_credential(world: World, tmp_path: Path) -> None:
    reply = world.server.request(
        "POST",
        f"{API}/datasets/{world.big.id}/download-token",
        json_body={"format": "original", "expires_in": 600, "max_uses": 3},
    )
    assert reply.status == 201, reply.body
    url = reply.json()["url"]
    assert url.startswith(world.server.url) and "token=" in url
    out = tmp_path / "big.csv"
    result = _curl(world, "-o", str(out), "-w", "%{http_code}", url, who=None)
    assert result.returncode == 0, result.stderr
    assert _status(result) == 200
    assert file_sha256(out) == world.big.sha256
    # Without the token the private dataset is not there at all.
    bare = _curl(world, "-o", "/dev/null", "-w", "%{http_code}", url.split("?")[0], who=None)
    assert _status(bare) == 404


# --- wget and aria2c ----------------------------------------------------------------------


def test_wget_continues_a_partial_file(world: World, tmp_path: Path) -> None:
    wget = _need("wget")
    out = tmp_path / "big.csv"
    out.write_bytes(world.big.data[:3_000_000])
    result = _run(
        [
            wget,
            "-q",
            "-c",
            "--header",
            world.server.auth_header(),
            "-O",
            str(out),
            world.server.download_url(world.big.id),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert file_sha256(out) == world.big.sha256
    ranges = [r["range"] for r in world.server.history(world.big.id, limit=20)]
    assert "bytes=3000000-" in ranges


def test_aria2c_segmented_download_with_checksum(world: World, tmp_path: Path) -> None:
    aria2c = _need("aria2c")
    result = _run(
        [
            aria2c,
            "-q",
            "-x8",
            "-s8",
            "-k1M",
            # Unthrottled, the first connection takes the whole file over loopback before
            # the others start; at 8 MB/s aria2c splits it into 1 MiB ranges.
            "--max-download-limit=8M",
            f"--checksum=sha-256={world.big.sha256}",
            "--header",
            world.server.auth_header(),
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "-d",
            str(tmp_path),
            "-o",
            "big.csv",
            world.server.download_url(world.big.id),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert file_sha256(tmp_path / "big.csv") == world.big.sha256
    segments = [
        r["range"]
        for r in world.server.history(world.big.id)
        if (r["user_agent"] or "").startswith("aria2") and r["range"] is not None
    ]
    assert len(segments) >= 2, segments


# --- fsspec, pyarrow, pandas --------------------------------------------------------------


def _http_fs(world: World) -> Any:
    fsspec = pytest.importorskip("fsspec")
    return fsspec.filesystem("http", headers=world.server.auth(), skip_instance_cache=True)


def test_fsspec_seeks_to_the_end(world: World) -> None:
    fs = _http_fs(world)
    url = world.server.download_url(world.big.id)
    assert fs.size(url) == len(world.big.data)
    with fs.open(url, "rb", block_size=64 * 1024) as f:
        f.seek(-100, 2)
        tail = f.read()
        f.seek(1000)
        middle = f.read(500)
    assert tail == world.big.data[-100:]
    assert middle == world.big.data[1000:1500]


def test_pyarrow_reads_parquet_over_http_with_range_requests(world: World) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    fs = _http_fs(world)
    url = world.server.download_url(world.parquet.id)
    with fs.open(url, "rb", block_size=128 * 1024) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_row_groups == 10
        table = parquet.read()
        second = parquet.read_row_group(1)
    assert table.equals(world.parquet_table)
    assert second.equals(world.parquet_table.slice(6_000, 6_000))
    records = [r for r in world.server.history(world.parquet.id) if r["status"] != "denied"]
    assert len(records) >= 2, records
    assert all(r["range"] is not None for r in records), [r["range"] for r in records]
    size = len(world.parquet.data)
    sent = sum(r["bytes_sent"] for r in records)
    assert sent < 2 * size, (sent, size)


def test_pandas_reads_a_csv_url(world: World) -> None:
    pd = pytest.importorskip("pandas")
    options = world.server.auth()
    url = world.server.download_url(world.penguins.id, format="csv")
    frame = pd.read_csv(url, storage_options=options)
    pd.testing.assert_frame_equal(frame, pd.read_csv(io.BytesIO(PENGUINS)))


def test_pandas_reads_a_json_dataset_converted_to_csv(world: World) -> None:
    pd = pytest.importorskip("pandas")
    url = world.server.download_url(world.cars.id, format="csv")
    frame = pd.read_csv(url, storage_options=world.server.auth())
    source = pd.read_json(io.BytesIO(CARS))
    pd.testing.assert_frame_equal(frame, source)


# --- RFC 9110 ranges and preconditions over raw HTTP --------------------------------------


def test_if_range_with_a_stale_etag_gets_the_new_version_whole(world: World) -> None:
    server = world.server
    v1 = b"id,word\n" + b"".join(b"%d,old-%d\n" % (i, i) for i in range(2000))
    v2 = b"id,word\n" + b"".join(b"%d,NEW-%d\n" % (i, i) for i in range(2500))
    dataset = server.publish(v1, filename="versions.csv", slug="versions", content_type="text/csv")
    # No waiting for v1's analysis: its outcome landing after the replacement must not
    # bring v1 back (the catalogue's writes are compare-and-set).
    path = server.download_path(dataset["id"])
    first = server.request("GET", path, headers={"Range": "bytes=0-999"})
    assert first.status == 206
    assert first.body == v1[:1000]
    stale = first.header("ETag")
    assert stale is not None
    server.replace_file(dataset["id"], v2, content_type="text/csv")
    resumed = server.request("GET", path, headers={"Range": "bytes=1000-", "If-Range": stale})
    state = server.request("GET", f"{API}/datasets/{dataset['id']}/versions").body
    assert resumed.status == 200, (resumed.headers, state, server.history(dataset["id"]))
    assert resumed.header("Content-Range") is None
    assert resumed.body == v2
    assert resumed.header("ETag") != stale
    fresh = resumed.header("ETag")
    assert fresh is not None
    ranged = server.request("GET", path, headers={"Range": "bytes=1000-", "If-Range": fresh})
    assert ranged.status == 206
    assert ranged.body == v2[1000:]


def test_if_range_with_a_date(world: World) -> None:
    server = world.server
    path = server.download_path(world.penguins.id)
    head = server.request("HEAD", path)
    last_modified = head.header("Last-Modified")
    assert last_modified is not None
    same = server.request(
        "GET", path, headers={"Range": "bytes=100-199", "If-Range": last_modified}
    )
    assert same.status == 206
    assert same.body == PENGUINS[100:200]
    older = server.request(
        "GET", path, headers={"Range": "bytes=100-199", "If-Range": "Thu, 01 Jan 2015 00:00:00 GMT"}
    )
    assert older.status == 200
    assert older.body == PENGUINS


def test_if_none_match_and_if_match(world: World) -> None:
    server = world.server
    path = server.download_path(world.penguins.id)
    etag = server.request("HEAD", path).header("ETag")
    assert etag is not None
    not_modified = server.request("GET", path, headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.body == b""
    assert not_modified.header("ETag") == etag
    star = server.request("GET", path, headers={"If-None-Match": "*"})
    assert star.status == 304
    other = server.request("GET", path, headers={"If-None-Match": '"something-else"'})
    assert other.status == 200
    assert other.body == PENGUINS
    failed = server.request("GET", path, headers={"If-Match": '"something-else"'})
    assert failed.status == 412
    assert (failed.header("Content-Type") or "").startswith("application/problem+json")
    assert failed.json()["code"] == "precondition_failed"
    matched = server.request("GET", path, headers={"If-Match": etag})
    assert matched.status == 200
    assert matched.body == PENGUINS


def test_an_empty_suffix_range_is_not_satisfiable(world: World) -> None:
    server = world.server
    reply = server.request(
        "GET", server.download_path(world.penguins.id), headers={"Range": "bytes=-0"}
    )
    assert reply.status == 416
    assert reply.header("Content-Range") == f"bytes */{len(PENGUINS)}"
    assert reply.json()["code"] == "range_not_satisfiable"


def test_multiple_ranges_answer_multipart_byteranges(world: World) -> None:
    server = world.server
    data = world.penguins.data
    size = len(data)
    reply = server.request(
        "GET",
        server.download_path(world.penguins.id),
        headers={"Range": "bytes=0-9,100-149,-20"},
    )
    assert reply.status == 206
    content_type = reply.header("Content-Type") or ""
    assert content_type.startswith("multipart/byteranges")
    assert int(reply.header("Content-Length") or -1) == len(reply.body)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + reply.body
    )
    parts = list(message.iter_parts())
    expected = [(0, 9), (100, 149), (size - 20, size - 1)]
    assert len(parts) == len(expected)
    for part, (first, last) in zip(parts, expected, strict=True):
        assert part["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert part["Content-Type"].startswith("text/csv")
        assert part.get_payload(decode=True) == data[first : last + 1]


def test_a_converted_format_has_validators_and_ranges(world: World) -> None:
    """Converted downloads come from the derived-file cache: length, ETag, ranges, 304."""
    server = world.server
    path = server.download_path(world.cars.id, format="csv")
    whole = server.request("GET", path)
    assert whole.status == 200
    etag = whole.header("ETag")
    assert etag is not None and etag.endswith('-csv"')
    assert int(whole.header("Content-Length") or -1) == len(whole.body)
    head = server.request("HEAD", path)
    assert head.status == 200
    assert head.body == b""
    for name in ("ETag", "Content-Length", "Content-Type", "Last-Modified", "Accept-Ranges"):
        assert head.header(name) == whole.header(name), name
    ranged = server.request("GET", path, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert ranged.status == 206
    assert ranged.body == whole.body[10:20]
    assert ranged.header("Content-Range") == f"bytes 10-19/{len(whole.body)}"
    assert server.request("GET", path, headers={"If-None-Match": etag}).status == 304
