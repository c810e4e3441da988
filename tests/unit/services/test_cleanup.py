"""Cleanup removes what has expired or was deleted, and nothing else."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import datadl
from datadl.adapters.memory import MemoryBlobStore
from datadl.domain.policy import DownloadPolicy
from datadl.services.datasets import DatasetFacts
from datadl.services.downloads import DownloadAsk
from tests.conftest import World, chunks
from tests.unit.services.test_downloads import fetch, publish


async def test_cleanup_removes_expired_and_deleted_things_only(world: World) -> None:
    """Expired tokens, old audit rows, deleted datasets and surplus versions go; the rest stays."""
    app = datadl.bootstrap(
        catalog=world.app.catalog,
        blobs=world.app.blobs,
        audit_log=world.app.audit_log,
        usage=world.app.usage,
        clock=world.clock,
        keys=world.app.keys,
        keep_versions=2,
    )
    await app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(audit_retention_days=30)
    )
    kept = await publish(world, slug="kept")
    doomed = await publish(world, slug="doomed")
    await fetch(world, world.member, DownloadAsk(kept.id))
    short = await app.tokens.issue(world.owner, kept.id, expires_in=60)
    long = await app.tokens.issue(world.owner, kept.id, expires_in=86_400)
    for n in range(3):
        await app.datasets.replace_file(world.owner, kept.id, chunks(b"a,b\n%d,1\n" % n))
    await app.datasets.delete(world.owner, doomed.id)

    world.clock.advance(timedelta(days=31).total_seconds() - 86_000)
    await fetch(world, world.member, DownloadAsk(kept.id))
    world.clock.advance(86_000)

    report = await app.cleanup.run()
    assert report.datasets == 1
    assert report.versions == 2
    assert report.audit_records == 1
    assert report.tokens == 2
    keys = [k async for k in world.app.blobs.list("")]
    versions = await world.app.catalog.list_versions(kept.id)
    live = [v for v in versions if v.removed_at is None]
    assert [v.number for v in live] == [3, 4]
    assert sorted(keys) == sorted(v.file.storage_key for v in live)
    history = await app.audit.history(world.owner, kept.id)
    assert len(history.items) == 1
    del short, long
    again = await app.cleanup.run()
    assert (again.datasets, again.versions, again.audit_records, again.tokens) == (0, 0, 0, 0)


async def test_cleanup_purges_writes_left_unfinished_for_a_day(world: World) -> None:
    """Cleanup asks the blob store to drop staged bytes of writes begun over a day ago."""

    class Staging:
        """A blob store whose unfinished writes began at known times."""

        def __init__(self, inner: object, started: list[datetime]) -> None:
            self._inner = inner
            self.started = started

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        async def purge_staged(self, older_than: datetime) -> int:
            gone = [t for t in self.started if t < older_than]
            self.started = [t for t in self.started if t >= older_than]
            return len(gone)

    now = world.clock.now()
    blobs = Staging(world.app.blobs, [now - timedelta(days=2), now - timedelta(hours=1)])
    app = datadl.bootstrap(
        catalog=world.app.catalog,
        blobs=blobs,  # type: ignore[arg-type]
        audit_log=world.app.audit_log,
        usage=world.app.usage,
        clock=world.clock,
        keys=world.app.keys,
    )
    report = await app.cleanup.run()
    assert report.staged == 1
    assert blobs.started == [now - timedelta(hours=1)]


async def test_cleanup_removes_derived_files_no_live_version_needs(world: World) -> None:
    """Conversions of deleted content and of another engine version go; live ones stay."""
    blobs, app = _with_own_blobs(world)

    async def publish_here(slug: str, body: bytes) -> str:
        facts = DatasetFacts(organization="acme", filename=f"{slug}.csv", slug=slug)
        dataset = await app.datasets.publish(world.owner, facts, chunks(body))
        await fetch_with(app, world, DownloadAsk(dataset.id, format="jsonl"))
        return dataset.id

    kept = await publish_here("kept", b"a,b\n1,2\n3,4\n")
    doomed = await publish_here("doomed", b"a,b\n5,6\n")
    kept_sha = (await app.datasets.get(world.owner, kept)).file.sha256
    doomed_sha = (await app.datasets.get(world.owner, doomed)).file.sha256
    old_engine = f"derived/{kept_sha}/old-engine/jsonl"
    await blobs.write(old_engine, chunks(b"{}\n"))
    await app.datasets.delete(world.owner, doomed)

    async def derived_keys() -> list[str]:
        return [k async for k in blobs.list("derived/")]

    assert any(doomed_sha in k for k in await derived_keys())
    first = await app.cleanup.run()  # inside the grace period: a reader may hold them
    assert first.derived == 0
    world.clock.advance(2 * 3600)
    report = await app.cleanup.run()
    left = await derived_keys()
    assert report.derived >= 2
    assert not any(doomed_sha in k for k in left)
    assert old_engine not in left
    assert any(kept_sha in k for k in left)
    status, body, _ = await fetch_with(app, world, DownloadAsk(kept, format="jsonl"))
    assert status == 200
    assert body.count(b"\n") == 2


async def fetch_with(app: object, world: World, ask: DownloadAsk) -> tuple[int, bytes, str | None]:
    async with await app.downloads.open(world.owner, ask) as download:  # type: ignore[attr-defined]
        body = b"".join([c async for c in download])
    return download.status, body, download.id


async def test_cleanup_removes_a_conversion_that_lost_a_race(world: World) -> None:
    """Of two copies of one conversion, the one its pointer does not name goes; the other stays."""
    blobs, app = _with_own_blobs(world)
    facts = DatasetFacts(organization="acme", filename="race.csv", slug="race")
    dataset = await app.datasets.publish(world.owner, facts, chunks(b"a,b\n1,2\n"))
    await fetch_with(app, world, DownloadAsk(dataset.id, format="jsonl"))
    named = [k async for k in blobs.list("derived/") if k.endswith(".jsonl")]
    assert len(named) == 1
    loser = named[0].rpartition("/")[0] + "/lost-race.jsonl"
    await blobs.write(loser, chunks(b'{"a": 1, "b": 2}\n'))
    world.clock.advance(2 * 3600)
    report = await app.cleanup.run()
    left = [k async for k in blobs.list("derived/")]
    assert report.derived == 1
    assert loser not in left
    assert named[0] in left
    status, body, _ = await fetch_with(app, world, DownloadAsk(dataset.id, format="jsonl"))
    assert status == 200
    assert [json.loads(line) for line in body.splitlines()] == [{"a": 1, "b": 2}]


def _with_own_blobs(world: World) -> tuple[MemoryBlobStore, datadl.Datadl]:
    """The world's catalogue, audit log and usage over a blob store of the test's own."""
    blobs = MemoryBlobStore(clock=world.clock.now)
    app = datadl.bootstrap(
        catalog=world.app.catalog,
        blobs=blobs,
        audit_log=world.app.audit_log,
        usage=world.app.usage,
        clock=world.clock,
        keys=world.app.keys,
    )
    return blobs, app
