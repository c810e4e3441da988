"""Embed the datadl core in a plain script: publish, issue a token, download a range, audit.

Run with ``python examples/embed.py``; no server, no database, nothing written to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import datadl
from datadl.domain.access import Principal
from datadl.domain.model import Role, Visibility
from datadl.samples import path as sample_path
from datadl.services.datasets import DatasetFacts
from datadl.services.downloads import ClientInfo, DownloadAsk


async def read_file(path: Path, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Stream a local file in chunks, as an upload would arrive."""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


async def main() -> None:
    app = datadl.bootstrap()
    org = await app.accounts.create_organization("palmer", "Palmer Station LTER")
    alice = await app.accounts.create_user("alice", "Alice Owner")
    await app.accounts.add_member(org.slug, alice.name, Role.ADMIN)
    owner = await app.accounts.principal_for(alice.name)

    dataset = await app.datasets.publish(
        owner,
        DatasetFacts(
            organization=org.slug,
            filename="penguins.csv",
            title="Palmer penguins",
            visibility=Visibility.PRIVATE,
            tags=("biology", "antarctica"),
            license="CC0-1.0",
        ),
        read_file(sample_path("penguins.csv")),
    )
    size, digest = dataset.file.size_bytes, dataset.file.sha256
    print(f"published {dataset.slug}: {size} bytes, sha256 {digest[:16]}…")

    issued = await app.tokens.issue(
        owner, dataset.id, format="original", expires_in=600, max_uses=1
    )
    print(f"token {issued.claims.token_id} expires {issued.claims.expires_at:%Y-%m-%d %H:%M}Z")

    # Whoever holds the token needs no other credential: here an anonymous client.
    ask = DownloadAsk(
        dataset_id=dataset.id,
        token=issued.token,
        range="bytes=0-99",
        client=ClientInfo(address="127.0.0.1", user_agent="embed-example"),
    )
    async with await app.downloads.open(Principal.anonymous(), ask) as download:
        body = b"".join([chunk async for chunk in download])
    print(f"HTTP-equivalent status {download.status}, {download.content_range}")
    print(body.decode().splitlines()[0])

    page = await app.audit.history(owner, dataset.id)
    print("audit trail, newest first:")
    for record in page.items:
        print(
            f"  {record.started_at:%H:%M:%S} {record.status:<9} {record.format:<8} "
            f"range={record.byte_range} bytes={record.bytes_sent}/{record.bytes_expected} "
            f"via={record.channel}"
        )


if __name__ == "__main__":
    asyncio.run(main())
