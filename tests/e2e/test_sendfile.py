"""Downloads sent with sendfile over a real socket: bytes, and accounting when a client stalls."""

from __future__ import annotations

import asyncio
import hashlib
import socket

from yarl import URL

from datadl.domain.model import Visibility
from datadl.entrypoints.web import WebConfig, create_app
from tests.e2e.conftest import Server, running

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
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        request = f"GET {url.path} HTTP/1.1\r\nHost: {url.host}\r\nRange: bytes=10-\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 206")
        download_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-download-id:")
        )
        # More than the first sendfile slice (1 MiB), so that the stall hits a later one.
        got = 0
        while got < 3 * 1024 * 1024:
            got += len(await reader.read(65536))
        for _ in range(100):
            record = await srv.core.audit_log.get(download_id)
            if record.status.value != "started":
                break
            await asyncio.sleep(0.1)
        writer.close()
    assert record.status.value == "aborted"
    assert 0 < got <= record.bytes_sent < len(BIG) - 10
