"""A client that never finishes its request head cannot hold a connection for ever.

aiohttp (3.14) arms its keep-alive timer when a connection opens and again after each
response, and data arriving does not push it back: a request head must be complete
within ``keepalive_timeout`` seconds of either. ``RUNNER_OPTIONS`` sets 75 s; these
tests run the same options with half a second so that they finish quickly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from datadl.entrypoints.web import RUNNER_OPTIONS, create_app
from tests.e2e.conftest import Server

TIMEOUT = 0.5
#: Generous against a busy machine, far below the 75 s a real server allows.
CLOSED_WITHIN = 5.0


@pytest.fixture
async def port(srv: Server) -> AsyncIterator[int]:
    runner = web.AppRunner(create_app(srv.core), **{**RUNNER_OPTIONS, "keepalive_timeout": TIMEOUT})
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """Seconds until the server closes the connection (reads until EOF)."""
    started = time.monotonic()
    async with asyncio.timeout(CLOSED_WITHIN):
        while await reader.read(65536):
            pass
    writer.close()
    return time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_after(reader, writer) >= TIMEOUT * 0.9


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(port: int) -> None:
    """Steady progress does not extend the deadline: the head must arrive in time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 200

    async def dribble() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(dribble())
    try:
        closed = await _closed_after(reader, writer)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    assert closed < len(head) * 0.05, "the server waited for the whole slow head"


async def test_an_idle_kept_alive_connection_is_closed_after_its_answer(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"\r\n\r\n")
    # Kept open for the timeout (keep-alive works), then closed.
    assert await _closed_after(reader, writer) >= TIMEOUT * 0.9
