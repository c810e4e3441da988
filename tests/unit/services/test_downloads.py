"""The download use case end to end on the in-memory adapters."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import attrs
import pytest

from datadl.domain.access import Principal
from datadl.domain.accounting import DownloadStatus
from datadl.domain.errors import DatadlError, FileCorrupted
from datadl.domain.model import Dataset, DatasetVersion, Visibility
from datadl.domain.policy import DownloadPolicy, PolicyOverride, QuotaLimit
from datadl.domain.ratelimit import RateLimit
from datadl.services.datasets import DatasetFacts
from datadl.services.downloads import ClientInfo, DownloadAsk, Representation
from tests.conftest import World, chunks

ROWS = b"id,name,value\n" + b"".join(b"%d,row %d,%d.5\n" % (i, i, i) for i in range(20_000))


async def publish(world: World, data: bytes = ROWS, **facts: object) -> Dataset:
    facts.setdefault("visibility", Visibility.ORGANIZATION)
    return await world.app.datasets.publish(
        world.owner,
        DatasetFacts(organization=world.org_slug, filename="rows.csv", **facts),  # type: ignore[arg-type]
        chunks(data, 4096),
    )


async def fetch(world: World, principal: Principal, ask: DownloadAsk) -> tuple[int, bytes, str]:
    async with await world.app.downloads.open(principal, ask) as download:
        body = b"".join([c async for c in download])
    assert download.id is not None
    return download.status, body, download.id


async def code_of(world: World, principal: Principal, ask: DownloadAsk) -> str:
    with pytest.raises(DatadlError) as caught:
        await world.app.downloads.open(principal, ask)
    return caught.value.code


async def test_full_download_streams_the_exact_bytes_and_records_completion(world: World) -> None:
    """A full download returns the published bytes and leaves one completed record."""
    dataset = await publish(world)
    status, body, download_id = await fetch(world, world.member, DownloadAsk(dataset.id))
    assert (status, body) == (200, ROWS)
    record = await world.app.audit_log.get(download_id)
    assert record.status is DownloadStatus.COMPLETED
    assert (record.bytes_sent, record.bytes_expected) == (len(ROWS), len(ROWS))
    assert record.logical
    assert (await world.app.datasets.get(world.member, dataset.id)).download_count == 1


async def test_range_download_returns_the_slice_and_counts_its_bytes(world: World) -> None:
    """A ranged request answers 206 with exactly that slice and records its length."""
    dataset = await publish(world)
    ask = DownloadAsk(dataset.id, range="bytes=100-199")
    status, body, download_id = await fetch(world, world.member, ask)
    assert (status, body) == (206, ROWS[100:200])
    record = await world.app.audit_log.get(download_id)
    assert (record.bytes_sent, record.byte_range) == (100, "bytes=100-199")


async def test_multirange_body_frames_each_part(world: World) -> None:
    """Two ranges answer a multipart body whose length is what was announced."""
    dataset = await publish(world)
    async with await world.app.downloads.open(
        world.member, DownloadAsk(dataset.id, range="bytes=0-9,-10")
    ) as download:
        body = b"".join([c async for c in download])
    assert download.status == 206
    assert download.multipart is not None
    assert len(body) == download.content_length
    assert ROWS[:10] in body and ROWS[-10:] in body
    record = await world.app.audit_log.get(download.id or "")
    assert record.bytes_sent == 20


async def test_consumer_that_stops_early_aborts_with_bytes_sent(world: World) -> None:
    """Closing a download mid-stream records an abort with only the bytes delivered."""
    dataset = await publish(world)
    download = await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    received = 0
    async for chunk in download:
        received += len(chunk)
        break
    await download.aclose()
    record = await world.app.audit_log.get(download.id or "")
    assert record.status is DownloadStatus.ABORTED
    assert 0 < record.bytes_sent == received < len(ROWS)


async def test_abort_settles_the_quota_with_bytes_actually_sent(world: World) -> None:
    """An aborted download charges the quota only for what was delivered."""
    dataset = await publish(world)
    policy = DownloadPolicy(user_quota=QuotaLimit(bytes=10 * len(ROWS), downloads=100))
    await world.app.datasets.set_organization_policy(world.admin, "acme", policy)
    download = await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    async for chunk in download:
        sent = len(chunk)
        break
    await download.aclose()
    (status,) = [q for q in await world.app.audit.quota(world.member) if q.subject == "user"]
    assert status.used.bytes == sent
    assert status.used.downloads == 1


async def test_quota_refuses_a_download_that_does_not_fit_and_records_it(world: World) -> None:
    """A download larger than the quota left is refused before any byte, and audited."""
    dataset = await publish(world)
    policy = DownloadPolicy(user_quota=QuotaLimit(bytes=len(ROWS) + 10))
    await world.app.datasets.set_organization_policy(world.admin, "acme", policy)
    await fetch(world, world.member, DownloadAsk(dataset.id))
    world.clock.advance(1)
    with pytest.raises(DatadlError) as caught:
        await world.app.downloads.open(world.member, DownloadAsk(dataset.id, range="bytes=0-99"))
    assert caught.value.code == "quota_exceeded"
    assert caught.value.resets_at is not None
    page = await world.app.audit.history(world.owner, dataset.id)
    assert [r.status for r in page.items] == [DownloadStatus.DENIED, DownloadStatus.COMPLETED]
    assert page.items[0].denial_code == "quota_exceeded"


async def test_resumed_download_counts_as_one_logical_download(world: World) -> None:
    """Several ranged requests of one session count once as a download, each as a request."""
    dataset = await publish(world)
    half = len(ROWS) // 2
    await fetch(world, world.member, DownloadAsk(dataset.id, range=f"bytes=0-{half - 1}"))
    world.clock.advance(60)
    await fetch(world, world.member, DownloadAsk(dataset.id, range=f"bytes={half}-"))
    stats = await world.app.audit.analytics(world.owner, dataset.id, days=1)
    assert (stats.downloads, stats.requests, stats.bytes) == (1, 2, len(ROWS))
    assert stats.unique_downloaders == 1
    world.clock.advance(3600)
    await fetch(world, world.member, DownloadAsk(dataset.id))
    stats = await world.app.audit.analytics(world.owner, dataset.id, days=1)
    assert (stats.downloads, stats.requests) == (2, 3)


async def test_hidden_dataset_answers_exactly_like_a_missing_one(world: World) -> None:
    """An outsider asking for a private dataset gets the same not_found as for no dataset."""
    dataset = await publish(world, visibility=Visibility.PRIVATE)
    with pytest.raises(DatadlError) as hidden:
        await world.app.downloads.open(world.outsider, DownloadAsk(dataset.id))
    with pytest.raises(DatadlError) as missing:
        await world.app.downloads.open(world.outsider, DownloadAsk("no-such-id"))
    assert hidden.value.code == missing.value.code == "not_found"
    assert (hidden.value.message, hidden.value.hint) == (missing.value.message, missing.value.hint)
    assert hidden.value.extra == missing.value.extra
    page = await world.app.audit.history(world.owner, dataset.id)
    assert [(r.status, r.denial_code) for r in page.items] == [(DownloadStatus.DENIED, "not_found")]


async def test_anonymous_download_follows_the_policy(world: World) -> None:
    """Anonymous users download public datasets only where the policy allows it."""
    dataset = await publish(world, visibility=Visibility.PUBLIC)
    anonymous = Principal.anonymous()
    status, body, _ = await fetch(world, anonymous, DownloadAsk(dataset.id))
    assert (status, body) == (200, ROWS)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(allow_anonymous=False)
    )
    assert await code_of(world, anonymous, DownloadAsk(dataset.id)) == "auth_required"


async def test_rate_limit_denies_past_the_burst_with_retry_after(world: World) -> None:
    """Past its burst a downloader is refused with rate_limited and header fields."""
    dataset = await publish(world)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(rate_limit=RateLimit(2, 60))
    )
    for _ in range(2):
        await fetch(world, world.member, DownloadAsk(dataset.id, range="bytes=0-0"))
    with pytest.raises(DatadlError) as caught:
        await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after == 30
    assert caught.value.extra["ratelimit"]["RateLimit"].endswith("r=0;t=30")
    world.clock.advance(30)
    await fetch(world, world.member, DownloadAsk(dataset.id, range="bytes=0-0"))


async def test_conditional_requests(world: World) -> None:
    """If-None-Match gives 304 and a stale If-Range gives the full new body."""
    dataset = await publish(world)
    first = await world.app.downloads.open(world.member, DownloadAsk(dataset.id, head=True))
    etag = first.etag
    async with await world.app.downloads.open(
        world.member, DownloadAsk(dataset.id, if_none_match=etag)
    ) as download:
        assert download.status == 304
        assert [c async for c in download] == []
    new_rows = ROWS.replace(b"row", b"ROW")
    await world.app.datasets.replace_file(world.owner, dataset.id, chunks(new_rows))
    status, body, _ = await fetch(
        world, world.member, DownloadAsk(dataset.id, range="bytes=10-19", if_range=etag)
    )
    assert (status, body) == (200, new_rows)


async def test_old_versions_stay_downloadable(world: World) -> None:
    """After a replace, version 1 still downloads its own bytes."""
    dataset = await publish(world)
    await world.app.datasets.replace_file(world.owner, dataset.id, chunks(b"a,b\n1,2\n"))
    _, old, _ = await fetch(world, world.member, DownloadAsk(dataset.id, version=1))
    _, new, _ = await fetch(world, world.member, DownloadAsk(dataset.id))
    assert (old, new) == (ROWS, b"a,b\n1,2\n")
    assert await code_of(world, world.member, DownloadAsk(dataset.id, version=7)) == "not_found"


async def test_unsatisfiable_range_is_refused_and_recorded(world: World) -> None:
    """A range past the end is refused with the size, and recorded as denied."""
    dataset = await publish(world)
    with pytest.raises(DatadlError) as caught:
        await world.app.downloads.open(world.member, DownloadAsk(dataset.id, range="bytes=-0"))
    assert caught.value.code == "range_not_satisfiable"
    assert caught.value.size == len(ROWS)  # type: ignore[attr-defined]
    page = await world.app.audit.history(world.owner, dataset.id)
    assert page.items[0].denial_code == "range_not_satisfiable"


async def test_corrupted_bytes_break_the_transfer_and_flag_the_dataset(world: World) -> None:
    """A hash mismatch withholds the last chunk, fails the record and flags the dataset."""
    dataset = await publish(world)
    key = dataset.file.storage_key
    tampered = bytearray(ROWS)
    tampered[-5] ^= 1
    await world.app.blobs.delete(key)
    await world.app.blobs.write(key, chunks(bytes(tampered)))
    download = await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    received = bytearray()

    async def write(chunk: bytes) -> None:
        received.extend(chunk)

    with pytest.raises(FileCorrupted):
        await download.send(write)
    await download.aclose()
    assert len(received) < len(ROWS)
    record = await world.app.audit_log.get(download.id or "")
    assert record.status is DownloadStatus.FAILED
    assert record.failure_reason is not None and "sha256" in record.failure_reason
    flagged = await world.app.datasets.get(world.owner, dataset.id)
    assert flagged.corrupted_reason is not None


async def test_size_mismatch_is_never_served(world: World) -> None:
    """A stored object whose size differs from the catalogue is refused before streaming."""
    dataset = await publish(world)
    key = dataset.file.storage_key
    await world.app.blobs.delete(key)
    await world.app.blobs.write(key, chunks(ROWS[:-1]))
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "file_corrupted"
    page = await world.app.audit.history(world.owner, dataset.id)
    assert page.items[0].status is DownloadStatus.FAILED


async def test_missing_file_fails_with_file_missing(world: World) -> None:
    """A stored object that vanished answers file_missing and is recorded as failed."""
    dataset = await publish(world)
    await world.app.blobs.delete(dataset.file.storage_key)
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "file_missing"


async def test_live_progress_is_visible_while_streaming(world: World) -> None:
    """While bytes flow, the record's progress shows what was sent so far."""
    dataset = await publish(world)
    download = await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    iterator = aiter(download)
    first = await anext(iterator)
    await anext(iterator)
    live = await world.app.downloads.progress(world.member, download.id or "")
    assert live.status is DownloadStatus.STARTED
    assert live.bytes_sent >= len(first)
    with pytest.raises(DatadlError):
        await world.app.downloads.progress(world.outsider, download.id or "")
    await download.aclose()


async def test_download_scope_is_required_for_api_keys(world: World) -> None:
    """An API key without the download scope is refused, whatever the dataset."""
    dataset = await publish(world)
    created = await world.app.accounts.create_api_key(world.member, "ro", ["read"])
    principal = await world.app.accounts.authenticate_api_key(created.plaintext)
    assert await code_of(world, principal, DownloadAsk(dataset.id)) == "forbidden"
    assert await code_of(world, principal, DownloadAsk("missing")) == "forbidden"


async def test_dataset_policy_tightens_format_and_size(world: World) -> None:
    """A dataset's own policy can forbid formats and cap sizes below its organisation's."""
    dataset = await publish(world)
    await world.app.datasets.set_dataset_policy(
        world.owner, dataset.id, PolicyOverride(max_download_bytes=len(ROWS) - 1)
    )
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "too_large"
    await world.app.datasets.set_dataset_policy(
        world.owner, dataset.id, PolicyOverride(allowed_formats=frozenset({"parquet"}))
    )
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "format_not_allowed"


async def test_terms_must_be_accepted(world: World) -> None:
    """With terms set, a member must accept them; the owner need not."""
    dataset = await publish(world)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(terms="Cite us.")
    )
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "terms_not_accepted"
    await fetch(world, world.member, DownloadAsk(dataset.id, accept_terms=True))
    await fetch(world, world.owner, DownloadAsk(dataset.id))


async def test_head_reserves_and_records_nothing(world: World) -> None:
    """HEAD answers the same facts as GET but records and charges nothing."""
    dataset = await publish(world)
    head = await world.app.downloads.open(world.member, DownloadAsk(dataset.id, head=True))
    assert head.id is None
    assert head.content_length == len(ROWS)
    assert head.repr_digest is not None
    digest = hashlib.sha256(ROWS).digest()
    import base64

    assert head.repr_digest == f"sha-256=:{base64.b64encode(digest).decode()}:"
    page = await world.app.audit.history(world.owner, dataset.id)
    assert page.items == ()


async def test_every_attempt_writes_exactly_one_record(world: World) -> None:
    """Allowed, denied, aborted and failed attempts each leave one record, no more."""
    dataset = await publish(world, visibility=Visibility.PRIVATE)
    await fetch(world, world.owner, DownloadAsk(dataset.id))
    await code_of(world, world.outsider, DownloadAsk(dataset.id))
    aborted = await world.app.downloads.open(world.owner, DownloadAsk(dataset.id))
    await aborted.aclose()
    page = await world.app.audit.history(world.owner, dataset.id)
    assert sorted(r.status for r in page.items) == sorted(
        [DownloadStatus.COMPLETED, DownloadStatus.DENIED, DownloadStatus.ABORTED]
    )


async def test_client_info_is_recorded(world: World) -> None:
    """The audit record keeps the client address and agent and the channel."""
    dataset = await publish(world)
    ask = DownloadAsk(dataset.id, client=ClientInfo("127.0.0.9", "curl/8"))
    _, _, download_id = await fetch(world, world.member, ask)
    record = await world.app.audit_log.get(download_id)
    assert (record.client_address, record.user_agent) == ("127.0.0.9", "curl/8")
    assert attrs.asdict(record)["channel"] == "embedded"
    assert record.started_at == world.clock.now()
    assert record.finished_at is not None and record.finished_at - record.started_at < timedelta(1)


async def test_send_counts_only_what_the_writer_accepted(world: World) -> None:
    """When the writer fails (client gone), the abort records only the chunks written."""
    dataset = await publish(world)
    written: list[bytes] = []

    async def write(chunk: bytes) -> None:
        if len(written) == 2:
            raise ConnectionResetError("peer closed")
        written.append(chunk)

    download = await world.app.downloads.open(world.member, DownloadAsk(dataset.id))
    with pytest.raises(ConnectionResetError):
        await download.send(write)
    await download.aclose()
    record = await world.app.audit_log.get(download.id or "")
    assert record.status is DownloadStatus.ABORTED
    assert record.bytes_sent == sum(map(len, written)) > 0


async def test_send_completes_and_excludes_multipart_framing(world: World) -> None:
    """A multipart body sent through a writer counts payload bytes only."""
    dataset = await publish(world)
    out = bytearray()

    async def write(chunk: bytes) -> None:
        out.extend(chunk)

    download = await world.app.downloads.open(
        world.member, DownloadAsk(dataset.id, range="bytes=0-4,10-14")
    )
    await download.send(write)
    assert len(out) == download.content_length
    record = await world.app.audit_log.get(download.id or "")
    assert (record.status, record.bytes_sent) == (DownloadStatus.COMPLETED, 10)


async def test_publish_list_download_history_and_analytics_agree(world: World) -> None:
    """After a full, a ranged, an aborted and a denied download, the trail says exactly that."""
    dataset = await publish(world, title="Rows", tags=("demo",))
    listed = await world.app.datasets.list(world.member, tag="demo")
    assert [d.id for d in listed.items] == [dataset.id]
    await fetch(world, world.member, DownloadAsk(dataset.id))
    world.clock.advance(1)
    await fetch(world, world.admin, DownloadAsk(dataset.id, range="bytes=0-9"))
    world.clock.advance(1)
    aborted = await world.app.downloads.open(world.owner, DownloadAsk(dataset.id))
    iterator = aiter(aborted)
    first = await anext(iterator)
    await aborted.aclose()
    world.clock.advance(1)
    await code_of(world, world.outsider, DownloadAsk(dataset.id))

    page = await world.app.audit.history(world.owner, dataset.id)
    assert [(r.status, r.bytes_sent) for r in page.items] == [
        (DownloadStatus.DENIED, 0),
        (DownloadStatus.ABORTED, len(first)),
        (DownloadStatus.COMPLETED, 10),
        (DownloadStatus.COMPLETED, len(ROWS)),
    ]
    stats = await world.app.audit.analytics(world.owner, dataset.id, days=7)
    assert (stats.downloads, stats.requests, stats.unique_downloaders) == (3, 3, 3)
    assert (stats.completed, stats.aborted, stats.denials) == (2, 1, 1)
    assert stats.bytes == len(ROWS) + 10 + len(first)
    assert stats.denials_by_code == {"not_found": 1}
    assert stats.per_format == {"original": 3}
    assert len(stats.per_day) == 7
    assert stats.per_day[-1].requests == 3
    assert stats.top_downloaders[0].bytes == len(ROWS)
    failed_only = await world.app.audit.history(
        world.owner, dataset.id, status=DownloadStatus.DENIED
    )
    assert len(failed_only.items) == 1


async def test_a_reservation_whose_reply_was_lost_is_undone(world: World) -> None:
    """If the store applied a reservation but its answer was lost, nothing stays charged."""
    import datadl
    from datadl.adapters.memory import MemoryUsageStore
    from datadl.domain.errors import Unavailable
    from datadl.domain.quotas import Reservation, ReserveOutcome

    class LossyUsage(MemoryUsageStore):
        async def reserve(self, reservation: Reservation) -> ReserveOutcome:
            await super().reserve(reservation)
            raise Unavailable("reply lost")

    usage = LossyUsage()
    app = datadl.bootstrap(
        catalog=world.app.catalog,
        blobs=world.app.blobs,
        audit_log=world.app.audit_log,
        usage=usage,
        clock=world.clock,
        keys=world.app.keys,
    )
    dataset = await publish(world)
    await app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(user_quota=QuotaLimit(bytes=10 * len(ROWS)))
    )
    with pytest.raises(Unavailable):
        await app.downloads.open(world.member, DownloadAsk(dataset.id))
    (status,) = await app.audit.quota(world.member)
    assert status.used.bytes == 0


async def test_a_client_over_its_rate_starts_no_conversion(world: World) -> None:
    """The rate limit is checked before a converted representation is made (HEAD included)."""
    import datadl

    made: list[str] = []
    inner = world.app.downloads._deriver

    async def counting(dataset: Dataset, version: DatasetVersion, fmt: str) -> Representation:
        made.append(fmt)
        assert inner is not None
        return await inner(dataset, version, fmt)

    app = datadl.bootstrap(
        catalog=world.app.catalog,
        blobs=world.app.blobs,
        audit_log=world.app.audit_log,
        usage=world.app.usage,
        clock=world.clock,
        keys=world.app.keys,
        deriver=counting,
    )
    await app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(rate_limit=RateLimit(1, 60))
    )
    dataset = await publish(world)
    async with await app.downloads.open(world.member, DownloadAsk(dataset.id, format="jsonl")):
        pass
    with pytest.raises(DatadlError) as caught:
        await app.downloads.open(world.member, DownloadAsk(dataset.id, format="xlsx", head=True))
    assert caught.value.code == "rate_limited"
    assert made == ["jsonl"]
