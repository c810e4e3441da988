"""A datadl server on a loopback port over memory adapters and a local blob store, seeded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

import datadl
from datadl.adapters.storage import FsspecBlobStore
from datadl.adapters.system import FixedClock, StaticKeyRing
from datadl.domain.accounting import DownloadRecord, DownloadStatus
from datadl.domain.model import Dataset, Role, Scope, Visibility
from datadl.domain.tokens import SigningKey
from datadl.entrypoints.web import create_app
from datadl.services.datasets import DatasetFacts
from tests.conftest import START, chunks

PENGUINS = resources.files("datadl.samples").joinpath("penguins.csv").read_bytes()


@attrs.define
class Server:
    """A running server, a client session, the core behind it and the seeded names."""

    core: datadl.Datadl
    app: web.Application
    url: str
    http: aiohttp.ClientSession
    clock: FixedClock
    keys: dict[str, str]
    penguins: Dataset
    public: Dataset
    private: Dataset
    blob_root: Path

    def blob_path(self, dataset: Dataset) -> Path:
        """Where the local blob store keeps a dataset's current file."""
        return self.blob_root / dataset.file.storage_key

    def auth(self, who: str) -> dict[str, str]:
        """The Authorization header of a seeded user's API key."""
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def download_url(self, dataset: Dataset | str, **query: Any) -> str:
        dataset_id = dataset if isinstance(dataset, str) else dataset.id
        return f"{self.url}/api/v1/datasets/{dataset_id}/download"

    async def publish(self, who: str, data: bytes, **facts: Any) -> Dataset:
        """Publish through the core (not HTTP) as a seeded user."""
        facts.setdefault("organization", "acme")
        facts.setdefault("filename", "data.csv")
        principal = await self.core.accounts.principal_for(who)
        return await self.core.datasets.publish(principal, DatasetFacts(**facts), chunks(data))


async def start_server(tmp_path: Path, **create: Any) -> AsyncIterator[Server]:
    clock = FixedClock(START)
    keys = StaticKeyRing([SigningKey("k1", b"s" * 32)], b"c" * 32)
    blobs = FsspecBlobStore.from_url(f"file://{tmp_path / 'blobs'}")
    core = datadl.bootstrap(clock=clock, keys=keys, blobs=blobs)
    accounts = core.accounts
    await accounts.create_organization("acme", "Acme Research")
    await accounts.create_organization("other")
    roles = {"olivia": Role.MEMBER, "mark": Role.MEMBER, "ada": Role.ADMIN}
    api_keys: dict[str, str] = {}
    for name in ("olivia", "mark", "oscar", "ada"):
        await accounts.create_user(name)
        await accounts.add_member(
            "acme" if name in roles else "other", name, roles.get(name, "member")
        )
        principal = await accounts.principal_for(name)
        created = await accounts.create_api_key(principal, f"{name}-key", tuple(Scope))
        api_keys[name] = created.plaintext
    olivia = await accounts.principal_for("olivia")

    async def publish(data: bytes, **facts: Any) -> Dataset:
        facts.setdefault("organization", "acme")
        return await core.datasets.publish(olivia, DatasetFacts(**facts), chunks(data))

    penguins = await publish(
        PENGUINS,
        filename="penguins.csv",
        title="Penguins",
        visibility=Visibility.ORGANIZATION,
        tags=("birds",),
    )
    public = await publish(
        PENGUINS, filename="public.csv", slug="public-penguins", visibility=Visibility.PUBLIC
    )
    private = await publish(
        PENGUINS, filename="secret.csv", slug="secret", visibility=Visibility.PRIVATE
    )
    app = create_app(core, **create)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield Server(
            core=core,
            app=app,
            url=str(server.make_url("")).rstrip("/"),
            http=http,
            clock=clock,
            keys=api_keys,
            penguins=penguins,
            public=public,
            private=private,
            blob_root=tmp_path / "blobs",
        )
    finally:
        await http.close()
        await server.close()
        closer = getattr(getattr(core, "insight", None), "aclose", None)
        if closer is not None:
            await closer()


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    async for server in start_server(tmp_path):
        yield server


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """Serve another app (over a changed core) on a loopback port, with a client."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        yield str(server.make_url("")).rstrip("/"), http
    finally:
        await http.close()
        await server.close()


# --- a raw HTTP/1.1 client, for tests that hang up or stall on purpose ----------------------


@attrs.define
class RawDownload:
    """A download request on a connection of its own, its response head read."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes
    download_id: str


async def raw_connection(
    url: URL, *, small_buffer: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``url``'s server; ``small_buffer`` makes it a slow reader's (4 KiB)."""
    if not small_buffer:
        return await asyncio.open_connection(url.host, url.port)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    return await asyncio.open_connection(sock=sock, limit=4096)


def raw_get(url: URL, headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a GET of ``url`` with ``headers``."""
    lines = [f"GET {url.path} HTTP/1.1", f"Host: {url.host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def start_raw_download(
    url: URL, headers: Mapping[str, str] | None = None, *, small_buffer: bool = False
) -> RawDownload:
    """Send a GET of ``url`` and read the response head and its ``X-Download-Id``."""
    reader, writer = await raw_connection(url, small_buffer=small_buffer)
    writer.write(raw_get(url, headers))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    download_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-download-id:")
    )
    return RawDownload(reader, writer, head, download_id)


async def settled_record(
    srv: Server, download_id: str, *, tries: int = 100, pause: float = 0.05
) -> DownloadRecord:
    """The download's record once it is no longer ``started`` (or the last one seen)."""
    for _ in range(tries):
        record = await srv.core.audit_log.get(download_id)
        if record.status is not DownloadStatus.STARTED:
            break
        await asyncio.sleep(pause)
    return record


async def give_users_a_quota(srv: Server) -> None:
    """A user quota on acme too large to refuse anything: every download reserves bytes."""
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"quota": {"user": {"bytes": 10**12, "downloads": None, "window": "day"}}},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200


async def user_bytes_used(srv: Server, who: str) -> int:
    """The bytes a user has used of acme's user quota (GET /me/quota)."""
    async with srv.http.get(f"{srv.url}/api/v1/me/quota", headers=srv.auth(who)) as response:
        quotas = (await response.json())["quotas"]
    user = next(q for q in quotas if q["subject"] == "user" and q["organization"] == "acme")
    return int(user["used"]["bytes"])
