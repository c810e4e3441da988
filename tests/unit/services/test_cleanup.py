"""Cleanup removes what has expired or was deleted, and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta

from datadl.domain.policy import DownloadPolicy
from datadl.services.downloads import DownloadAsk
from tests.conftest import World, chunks
from tests.unit.services.test_downloads import fetch, publish


async def test_cleanup_removes_expired_and_deleted_things_only(world: World) -> None:
    """Expired tokens, old audit rows, deleted datasets and surplus versions go; the rest stays."""
    import datadl

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
    import datadl

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
