"""Downloads sent with sendfile from a local store: when they may, and exact accounting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

import datadl
from datadl.adapters.storage import FsspecBlobStore
from datadl.adapters.system import FixedClock, StaticKeyRing
from datadl.domain.access import Principal
from datadl.domain.accounting import DownloadStatus
from datadl.domain.errors import FileCorrupted
from datadl.domain.model import Dataset, Role, Visibility
from datadl.domain.tokens import SigningKey
from datadl.services import downloads
from datadl.services.datasets import DatasetFacts
from datadl.services.downloads import DownloadAsk, SendFile
from tests.conftest import chunks

ROWS = b"id,name,value\n" + b"".join(b"%d,row %d,%d.5\n" % (i, i, i) for i in range(20_000))


class Client:
    """Receives a body through ``write`` and ``sendfile``, with ``loop.sendfile`` semantics."""

    def __init__(self, hang_up_after: int | None = None) -> None:
        self.body = bytearray()
        self.writes = 0
        self.sendfiles = 0
        self.hang_up_after = hang_up_after

    async def write(self, chunk: bytes) -> None:
        self.writes += 1
        self.body.extend(chunk)

    async def _sendfile(self, file: BinaryIO, offset: int, count: int) -> int:
        self.sendfiles += 1
        file.seek(offset)
        data = file.read(count)
        if self.hang_up_after is not None and len(self.body) + len(data) > self.hang_up_after:
            taken = self.hang_up_after - len(self.body)
            self.body.extend(data[:taken])
            file.seek(offset + taken)
            raise ConnectionResetError
        self.body.extend(data)
        return len(data)

    @property
    def sendfile(self) -> SendFile:
        return self._sendfile


@pytest.fixture
async def local(tmp_path: Path, clock: FixedClock) -> tuple[datadl.Datadl, Principal, Dataset]:
    keys = StaticKeyRing([SigningKey("k1", b"s" * 32)], b"c" * 32)
    app = datadl.bootstrap(
        clock=clock, keys=keys, blobs=FsspecBlobStore.from_url(f"file://{tmp_path / 'blobs'}")
    )
    await app.accounts.create_organization("acme")
    await app.accounts.create_user("olivia")
    await app.accounts.add_member("acme", "olivia", Role.MEMBER)
    owner = await app.accounts.principal_for("olivia")
    dataset = await app.datasets.publish(
        owner,
        DatasetFacts(organization="acme", filename="rows.csv", visibility=Visibility.ORGANIZATION),
        chunks(ROWS, 4096),
    )
    return app, owner, dataset


async def _send(app: datadl.Datadl, who: Principal, ask: DownloadAsk, client: Client) -> str:
    async with await app.downloads.open(who, ask) as download:
        await download.send(client.write, client.sendfile)
    assert download.id is not None
    return download.id


async def test_a_range_is_sent_from_the_file_and_counted_exactly(
    local: tuple[datadl.Datadl, Principal, Dataset],
) -> None:
    """A single range goes through sendfile and its record counts exactly its bytes."""
    app, owner, dataset = local
    client = Client()
    download_id = await _send(app, owner, DownloadAsk(dataset.id, range="bytes=100-70099"), client)
    assert bytes(client.body) == ROWS[100:70100]
    assert (client.sendfiles, client.writes) == (1, 0)
    record = await app.audit_log.get(download_id)
    assert record.status is DownloadStatus.COMPLETED
    assert record.bytes_sent == 70_000


async def test_a_full_read_is_hashed_once_then_sent_from_the_file(
    local: tuple[datadl.Datadl, Principal, Dataset],
) -> None:
    """The first full read streams through the SHA-256 check; the next one uses sendfile."""
    app, owner, dataset = local
    first, second = Client(), Client()
    await _send(app, owner, DownloadAsk(dataset.id), first)
    assert bytes(first.body) == ROWS and first.sendfiles == 0
    download_id = await _send(app, owner, DownloadAsk(dataset.id), second)
    assert bytes(second.body) == ROWS and second.sendfiles >= 1 and second.writes == 0
    record = await app.audit_log.get(download_id)
    assert (record.status, record.bytes_sent) == (DownloadStatus.COMPLETED, len(ROWS))


async def test_a_changed_file_is_hashed_again(
    local: tuple[datadl.Datadl, Principal, Dataset], tmp_path: Path
) -> None:
    """A stored file modified after its check is verified again, and corruption is caught."""
    app, owner, dataset = local
    await _send(app, owner, DownloadAsk(dataset.id), Client())
    path = tmp_path / "blobs" / dataset.file.storage_key
    tampered = bytearray(ROWS)
    tampered[-5] ^= 1
    path.write_bytes(bytes(tampered))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    client = Client()
    with pytest.raises(FileCorrupted):
        await _send(app, owner, DownloadAsk(dataset.id), client)
    assert client.sendfiles == 0 and len(client.body) < len(ROWS)


async def test_a_client_gone_mid_sendfile_settles_what_was_sent(
    local: tuple[datadl.Datadl, Principal, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hang-up inside a sendfile slice records an abort with the bytes actually sent."""
    app, owner, dataset = local
    monkeypatch.setattr(downloads, "SENDFILE_SLICE", 64 * 1024)
    client = Client(hang_up_after=100_000)
    download = await app.downloads.open(owner, DownloadAsk(dataset.id, range="bytes=0-299999"))
    with pytest.raises(ConnectionResetError):
        await download.send(client.write, client.sendfile)
    await download.aclose()
    record = await app.audit_log.get(download.id or "")
    assert record.status is DownloadStatus.ABORTED
    assert record.bytes_sent == 100_000 == len(client.body)
