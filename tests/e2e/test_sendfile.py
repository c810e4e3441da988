"""Downloads sent with sendfile over a real socket: bytes, and accounting when a client stalls."""

from __future__ import annotations

import hashlib

from yarl import URL

from datadl.domain.model import Visibility
from datadl.entrypoints.web import WebConfig, create_app
from tests.e2e.conftest import Server, running, settled_record, start_raw_download

BIG = b"a,b\n" + b"1234567,abcdefgh\n" * 3_000_000


async def test_repeated_full_and_ranged_downloads_carry_the_exact_bytes(srv: Server) -> None:
    """The first full read (hashed), the next ones (sendfile) and a range all match the file."""
    dataset = await srv.publish("olivia", BIG, filename="big.csv", visibility=Visibility.PUBLIC)
    url = srv.download_url(dataset)
    for _ in range(3):
        async with srv.http.get(url) as response:
            assert response.status == 200
            assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(BIG).digest()
    async with srv.http.get(url, headers={"Range": "bytes=1000000-2999999"}) as response:
        assert response.status == 206
        assert await response.read() == BIG[1_000_000:3_000_000]


async def test_a_stalled_ranged_download_settles_at_least_what_the_client_read(
    srv: Server,
) -> None:
    """A client that stops reading mid-sendfile is aborted with every byte it got counted."""
    dataset = await srv.publish("olivia", BIG, filename="big.csv", visibility=Visibility.PUBLIC)
    app = create_app(srv.core, config=WebConfig(write_timeout=1.0))
    async with running(app) as (base, _):
        url = URL(f"{base}/api/v1/datasets/{dataset.id}/download")
        download = await start_raw_download(url, {"Range": "bytes=10-"}, small_buffer=True)
        reader, writer = download.reader, download.writer
        assert download.head.startswith(b"HTTP/1.1 206")
        # More than the first sendfile slice (1 MiB), so that the stall hits a later one.
        got = 0
        while got < 3 * 1024 * 1024:
            got += len(await reader.read(65536))
        record = await settled_record(srv, download.download_id, pause=0.1)
        writer.close()
    assert record.status.value == "aborted"
    assert 0 < got <= record.bytes_sent < len(BIG) - 10
