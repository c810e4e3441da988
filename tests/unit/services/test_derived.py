"""The derived-file cache behind converted downloads, on memory adapters and the real engine."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from datadl.adapters.memory import MemoryCache
from datadl.adapters.system import FixedClock
from datadl.adapters.tables import _writers
from datadl.domain import conditional
from datadl.domain.accounting import DownloadStatus
from datadl.domain.errors import BadRequest, DatadlError, FileCorrupted, TooManyRows
from datadl.domain.model import Dataset, FileFormat
from datadl.domain.policy import DownloadPolicy, PolicyOverride, check_override, effective_policy
from datadl.ports.tables import ConvertOptions
from datadl.services.derived import DerivedFiles
from datadl.services.downloads import Download, DownloadAsk
from tests.unit.services.test_insight import PENGUINS, Setup, make_setup, publish

FORMULAS = b"name,cmd,n\nalice,=1+2,1\nbob,@SUM(A1),-2\ncarol,plain,3\n"


@pytest.fixture
async def setup(clock: FixedClock) -> AsyncIterator[Setup]:
    # Without analysis on publication, so that only the tests' own requests convert.
    made = await make_setup(clock, analyze=False)
    yield made
    await made.app.insight.aclose()


async def fetch(setup: Setup, dataset: Dataset, **ask: object) -> tuple[Download, bytes]:
    download = await setup.app.downloads.open(
        setup.world.member,
        DownloadAsk(dataset.id, **ask),  # type: ignore[arg-type]
    )
    async with download:
        body = b"".join([chunk async for chunk in download])
    return download, body


def alone(setup: Setup) -> DerivedFiles:
    """A derived-file cache with no cross-process lock: only in-process sharing applies."""
    return DerivedFiles(
        catalog=setup.app.catalog,
        blobs=setup.app.blobs,
        engine=setup.engine,
        entropy=setup.app.entropy,
    )


async def derived_keys(setup: Setup) -> list[str]:
    return [key async for key in setup.app.blobs.list("derived/")]


async def test_converted_download_has_length_etag_and_serves_ranges(setup: Setup) -> None:
    """A jsonl download states its exact length and a content ETag, and resumes by range."""
    dataset = await publish(setup)
    download, body = await fetch(setup, dataset, format="jsonl")
    assert download.status == 200
    assert download.content_length == len(body)
    lines = [json.loads(line) for line in body.splitlines()]
    assert len(lines) == 344
    assert lines[0]["species"] == "Adelie" and lines[0]["bill_length_mm"] == 39.1
    digest = hashlib.sha256(body).hexdigest()
    assert download.etag == conditional.make_etag(digest, "jsonl")
    assert download.etag != (await fetch(setup, dataset))[0].etag
    assert download.representation.filename == "penguins.jsonl"
    assert download.representation.media_type == "application/jsonl"
    assert download.record is not None
    assert download.record.status is DownloadStatus.COMPLETED
    ranged, part = await fetch(setup, dataset, format="jsonl", range="bytes=100-199")
    assert (ranged.status, part) == (206, body[100:200])
    assert ranged.content_range == f"bytes 100-199/{len(body)}"
    resumed, rest = await fetch(
        setup, dataset, format="jsonl", range="bytes=100-", if_range=download.etag
    )
    assert (resumed.status, rest) == (206, body[100:])
    assert setup.engine.calls["convert"] == 1  # every later request read the stored derivative


async def test_same_format_without_neutralisation_is_the_original(setup: Setup) -> None:
    """Asking a csv dataset for csv serves the published bytes; nothing is converted."""
    dataset = await publish(setup)
    download, body = await fetch(setup, dataset, format="csv")
    assert body == PENGUINS
    assert download.representation.key == dataset.file.storage_key
    assert setup.engine.calls["convert"] == 0


async def test_concurrent_requests_share_one_conversion(setup: Setup) -> None:
    """Two derivations of the same file and format at once run the engine once."""
    dataset = await publish(setup)
    derived = alone(setup)
    first, second = await asyncio.gather(
        derived.derive(dataset.file, FileFormat.PARQUET),
        derived.derive(dataset.file, FileFormat.PARQUET),
    )
    assert first == second
    assert setup.engine.calls["convert"] == 1
    assert await derived.derive(dataset.file, FileFormat.PARQUET) == first
    assert setup.engine.calls["convert"] == 1
    # Another process (a fresh cache over the same store) finds it too.
    assert await alone(setup).derive(dataset.file, FileFormat.PARQUET) == first
    assert setup.engine.calls["convert"] == 1
    assert first.key.startswith(f"derived/{dataset.file.sha256}/{setup.engine.version}/parquet/")


async def test_a_cancelled_requester_does_not_cancel_the_shared_conversion(setup: Setup) -> None:
    """When the first requester goes away, the one still waiting gets the derivative."""
    dataset = await publish(setup)
    derived = alone(setup)
    gone = asyncio.ensure_future(derived.derive(dataset.file, FileFormat.JSON))
    stays = asyncio.ensure_future(derived.derive(dataset.file, FileFormat.JSON))
    await asyncio.sleep(0)
    gone.cancel()
    blob = await stays
    assert gone.cancelled()
    assert blob.size > 0
    assert setup.engine.calls["convert"] == 1


async def test_waits_for_another_process_holding_the_lock(setup: Setup) -> None:
    """With another worker's lock in the cache, a request waits for its result, not converting."""
    dataset = await publish(setup)
    cache = MemoryCache()
    waiting = DerivedFiles(
        catalog=setup.app.catalog,
        blobs=setup.app.blobs,
        engine=setup.engine,
        entropy=setup.app.entropy,
        cache=cache,
        poll_seconds=0.01,
    )
    base = waiting.base_key(dataset.file, FileFormat.JSONL, ConvertOptions())
    assert await cache.add(f"derived-lock:{base}", b"1", ttl_seconds=60)
    pending = asyncio.ensure_future(waiting.derive(dataset.file, FileFormat.JSONL))
    await asyncio.sleep(0.05)
    assert not pending.done()
    assert setup.engine.calls["convert"] == 0
    built = await setup.app.derived.derive(dataset.file, FileFormat.JSONL)  # the other worker
    assert await asyncio.wait_for(pending, 5) == built
    assert setup.engine.calls["convert"] == 1


async def test_xlsx_beyond_a_sheet_is_refused_before_any_byte(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many rows for xlsx is a too_many_rows problem with a hint; nothing is stored or sent."""
    monkeypatch.setattr(_writers, "XLSX_MAX_ROWS", 100)
    dataset = await publish(setup)
    with pytest.raises(TooManyRows) as caught:
        await setup.app.downloads.open(setup.world.member, DownloadAsk(dataset.id, format="xlsx"))
    error = caught.value
    assert isinstance(error, BadRequest)
    assert error.code == "too_many_rows"
    assert "100" in error.message
    assert "csv" in error.hint and "parquet" in error.hint
    assert error.extra["limit_rows"] == 100
    assert await derived_keys(setup) == []
    page = await setup.app.audit.history(setup.world.owner, dataset.id)
    assert [(r.status, r.denial_code) for r in page.items] == [
        (DownloadStatus.DENIED, "too_many_rows")
    ]
    monkeypatch.setattr(_writers, "XLSX_MAX_ROWS", 1_048_575)
    _, body = await fetch(setup, dataset, format="xlsx")
    assert body[:2] == b"PK"


async def test_formula_neutralisation_follows_the_policy(setup: Setup) -> None:
    """With the organisation's policy on, csv cells that start a formula are prefixed."""
    dataset = await publish(setup, FORMULAS, "cells.csv")

    def cells(body: bytes) -> list[str]:
        return [row[1] for row in csv.reader(io.StringIO(body.decode()))][1:]

    _, plain = await fetch(setup, dataset, format="csv")
    assert plain == FORMULAS
    await setup.app.datasets.set_organization_policy(
        setup.world.admin, "acme", DownloadPolicy(neutralize_formulas=True)
    )
    download, safe = await fetch(setup, dataset, format="csv")
    assert cells(safe) == ["'=1+2", "'@SUM(A1)", "plain"]
    assert download.representation.key.startswith(
        f"derived/{dataset.file.sha256}/{setup.engine.version}/csv-neutralized/"
    )
    _, tsv = await fetch(setup, dataset, format="tsv")
    assert b"'=1+2" in tsv
    _, jsonl = await fetch(setup, dataset, format="jsonl")
    assert json.loads(jsonl.splitlines()[0])["cmd"] == "=1+2"  # only csv and tsv are neutralised
    assert [options.neutralize_formulas for _, options in setup.engine.converted] == [
        True,
        True,
        False,
    ]


async def test_a_dataset_may_turn_neutralisation_on_but_not_off() -> None:
    """The dataset's own policy can require neutralisation; it cannot drop the organisation's."""
    off, on = DownloadPolicy(), DownloadPolicy(neutralize_formulas=True)
    assert effective_policy(off, PolicyOverride(neutralize_formulas=True)).neutralize_formulas
    assert effective_policy(on, PolicyOverride(neutralize_formulas=False)).neutralize_formulas
    assert effective_policy(on, None).neutralize_formulas
    with pytest.raises(BadRequest) as caught:
        check_override(on, PolicyOverride(neutralize_formulas=False))
    assert "neutralize_formulas" in caught.value.message
    check_override(off, PolicyOverride(neutralize_formulas=True))


async def test_a_corrupted_derivative_is_dropped_without_flagging_the_dataset(
    setup: Setup,
) -> None:
    """Wrong derived bytes break that transfer, leave the dataset unflagged, and are rebuilt."""
    dataset = await publish(setup)
    download, good = await fetch(setup, dataset, format="json")
    key = download.representation.key
    bad = bytes(len(good))  # same size, other bytes

    async def once() -> AsyncIterator[bytes]:
        yield bad

    await setup.app.blobs.write(key, once())
    with pytest.raises(FileCorrupted):
        await fetch(setup, dataset, format="json")
    after = await setup.app.datasets.get(setup.world.owner, dataset.id)
    assert after.corrupted_reason is None
    assert not await setup.app.blobs.exists(key)
    again, body = await fetch(setup, dataset, format="json")
    assert body == good
    assert again.representation.key != key
    assert setup.engine.calls["convert"] == 2


async def test_unreadable_input_refuses_the_conversion_with_a_code(setup: Setup) -> None:
    """A file the engine cannot parse refuses a converted download with unsupported_format."""
    dataset = await publish(setup, b"a,b\n1,2\n3,4,5\n6,7\n", "broken.csv")
    with pytest.raises(DatadlError) as caught:
        await setup.app.downloads.open(
            setup.world.member, DownloadAsk(dataset.id, format="parquet")
        )
    assert caught.value.code == "unsupported_format"
    assert await derived_keys(setup) == []
    _, original = await fetch(setup, dataset)
    assert original.startswith(b"a,b")


async def test_a_long_conversion_keeps_its_lock_and_releases_it(setup: Setup) -> None:
    """The cross-process lock is renewed while a conversion outlasts its ttl, then released."""
    dataset = await publish(setup)
    gate = asyncio.Event()
    convert = setup.engine.convert

    def slow(file: Any, target: FileFormat, options: ConvertOptions) -> AsyncIterator[bytes]:
        async def held() -> AsyncIterator[bytes]:
            await gate.wait()
            async for chunk in convert(file, target, options):
                yield chunk

        return held()

    setup.engine.convert = slow  # type: ignore[method-assign]
    cache = MemoryCache()
    derived = DerivedFiles(
        catalog=setup.app.catalog,
        blobs=setup.app.blobs,
        engine=setup.engine,
        entropy=setup.app.entropy,
        cache=cache,
        lock_seconds=0.06,
    )
    lock = "derived-lock:" + derived.base_key(dataset.file, FileFormat.JSONL, ConvertOptions())
    running = asyncio.ensure_future(derived.derive(dataset.file, FileFormat.JSONL))
    await asyncio.sleep(0.25)
    assert await cache.get(lock) is not None
    gate.set()
    await running
    assert await cache.get(lock) is None
