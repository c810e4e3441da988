"""Tests for download records, their lifecycle, session keys and analytics arithmetic."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datadl.domain.accounting import (
    Channel,
    DayCount,
    DownloadRecord,
    DownloadStatus,
    InvalidTransition,
    TopDownloader,
    analytics_from_records,
    downloader_key,
    session_key,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
FINAL_FROM_STARTED = (DownloadStatus.COMPLETED, DownloadStatus.ABORTED, DownloadStatus.FAILED)
FINAL = (DownloadStatus.DENIED, *FINAL_FROM_STARTED)

_counter = iter(range(10**9))


def record(
    downloader: str = "user:ann",
    *,
    at: datetime = T0,
    status: DownloadStatus = DownloadStatus.STARTED,
    bytes_sent: int = 0,
    logical: bool = True,
    fmt: str = "csv",
    principal_id: str | None = None,
    denial_code: str | None = None,
) -> DownloadRecord:
    """One download record of dataset d1 version 1."""
    if principal_id is None and downloader.startswith("user:"):
        principal_id = downloader.removeprefix("user:")
    return DownloadRecord(
        id=f"r{next(_counter)}",
        dataset_id="d1",
        organization_id="acme",
        version=1,
        format=fmt,
        status=status,
        channel=Channel.API,
        started_at=at,
        downloader=downloader,
        principal_id=principal_id,
        bytes_expected=1_000,
        bytes_sent=bytes_sent,
        finished_at=None if status is DownloadStatus.STARTED else at,
        denial_code=denial_code,
        logical=logical,
    )


# --- lifecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", FINAL_FROM_STARTED)
def test_started_record_finishes_in_any_final_status(status: DownloadStatus) -> None:
    """A started download becomes completed, aborted or failed with its bytes, time and reason."""
    started = record().progressed(10)
    done = started.finished(status, bytes_sent=25, now=T0 + timedelta(seconds=3), reason="why")
    assert done.status is status
    assert done.bytes_sent == 25
    assert done.finished_at == T0 + timedelta(seconds=3)
    assert done.failure_reason == "why"
    assert status.is_final
    assert (
        attrs.evolve(
            done, status=started.status, bytes_sent=10, finished_at=None, failure_reason=None
        )
        == started
    )


@pytest.mark.parametrize("status", [DownloadStatus.STARTED, DownloadStatus.DENIED])
def test_started_record_cannot_finish_as_started_or_denied(status: DownloadStatus) -> None:
    """Only completed, aborted and failed are reachable from started."""
    with pytest.raises(InvalidTransition):
        record().finished(status, bytes_sent=0, now=T0)


@pytest.mark.parametrize("current", FINAL)
@pytest.mark.parametrize("target", list(DownloadStatus))
def test_final_records_never_change(current: DownloadStatus, target: DownloadStatus) -> None:
    """A record in a final status can neither finish again nor progress."""
    final = record(status=current, bytes_sent=5)
    with pytest.raises(InvalidTransition):
        final.finished(target, bytes_sent=5, now=T0)
    with pytest.raises(InvalidTransition):
        final.progressed(6)


def test_progress_never_decreases() -> None:
    """Bytes sent can stay or grow while started, and never go down, not even when finishing."""
    started = record().progressed(100)
    assert started.progressed(100).bytes_sent == 100
    assert started.progressed(150).bytes_sent == 150
    with pytest.raises(InvalidTransition):
        started.progressed(99)
    with pytest.raises(InvalidTransition):
        started.finished(DownloadStatus.COMPLETED, bytes_sent=99, now=T0)


def test_invalid_transition_is_a_value_error() -> None:
    """InvalidTransition is a ValueError, so generic handlers treat it as a bad value."""
    assert issubclass(InvalidTransition, ValueError)


def test_only_started_is_not_final() -> None:
    """Started is the one status that can still change."""
    assert [s for s in DownloadStatus if not s.is_final] == [DownloadStatus.STARTED]


def test_denied_record() -> None:
    """A denied record is final as written, with its code, time and extra context."""
    denied = DownloadRecord.denied(
        id="x1",
        dataset_id="d1",
        organization_id="acme",
        format="csv",
        version=2,
        code="quota_exceeded",
        channel=Channel.TOKEN,
        downloader="user:ann",
        now=T0,
        principal_id="ann",
        token_id="t9",
        client_address="192.0.2.7",
    )
    assert denied.status is DownloadStatus.DENIED
    assert denied.status.is_final
    assert denied.denial_code == "quota_exceeded"
    assert denied.started_at == denied.finished_at == T0
    assert (denied.principal_id, denied.token_id, denied.client_address) == (
        "ann",
        "t9",
        "192.0.2.7",
    )
    assert (denied.version, denied.format, denied.channel) == (2, "csv", Channel.TOKEN)
    assert denied.bytes_sent == 0
    assert not denied.logical
    with pytest.raises(InvalidTransition):
        denied.finished(DownloadStatus.COMPLETED, bytes_sent=0, now=T0)


# --- keys --------------------------------------------------------------------------------

SESSION_PARTS = {
    "downloader": "user:ann",
    "dataset_id": "d1",
    "version": 3,
    "format": "csv",
    "token_id": "t1",
}


@pytest.mark.parametrize(
    "change",
    [
        {"downloader": "user:bob"},
        {"downloader": "anon:0123"},
        {"dataset_id": "d2"},
        {"version": 4},
        {"format": "parquet"},
        {"format": "original"},
        {"token_id": "t2"},
        {"token_id": None},
    ],
)
def test_session_key_differs_when_any_input_differs(change: dict[str, object]) -> None:
    """Requests differing in downloader, dataset, version, format or token are other sessions."""
    assert session_key(**SESSION_PARTS) == session_key(**SESSION_PARTS)  # type: ignore[arg-type]
    changed = {**SESSION_PARTS, **change}
    assert session_key(**SESSION_PARTS) != session_key(**changed)  # type: ignore[arg-type]


text_parts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x1f"), max_size=12
)
session_inputs = st.fixed_dictionaries(
    {
        "downloader": text_parts,
        "dataset_id": text_parts,
        "version": st.integers(min_value=0, max_value=10**6),
        "format": text_parts,
        "token_id": st.none() | text_parts.filter(bool),
    }
)


@given(session_inputs, session_inputs)
def test_session_key_is_a_function_of_exactly_its_inputs(
    a: dict[str, object], b: dict[str, object]
) -> None:
    """Two requests share a session key exactly when all their inputs agree."""
    assert (session_key(**a) == session_key(**b)) is (a == b)  # type: ignore[arg-type]


def test_downloader_key_for_users() -> None:
    """A signed-in downloader is known by user id, whatever address they come from."""
    assert downloader_key("ann", "192.0.2.1") == downloader_key("ann", None) == "user:ann"
    assert downloader_key("ann", None) != downloader_key("bob", None)


@given(st.ip_addresses().map(str))
def test_downloader_key_never_contains_the_address(address: str) -> None:
    """An anonymous downloader's key is a stable one-way token that does not show the address."""
    key = downloader_key(None, address)
    assert address not in key
    assert key.startswith("anon:")
    assert key == downloader_key(None, address)


def test_downloader_key_separates_addresses() -> None:
    """Different addresses, and a missing address, give different anonymous keys."""
    keys = {
        downloader_key(None, "192.0.2.1"),
        downloader_key(None, "192.0.2.2"),
        downloader_key(None, "2001:db8::1"),
        downloader_key(None, None),
    }
    assert len(keys) == 4
    assert downloader_key(None, None) == downloader_key(None, None)


# --- analytics on a worked scenario ------------------------------------------------------

SINCE = T0
UNTIL = T0 + timedelta(days=5)  # 1 to 5 March; 5 March sees nothing at all.
ANON = downloader_key(None, "198.51.100.23")


def day(n: int, hour: int = 12) -> datetime:
    """Noon (or ``hour``) on ``n`` March 2025."""
    return datetime(2025, 3, n, hour, tzinfo=UTC)


SCENARIO = [
    # 1 March: dave at the very first instant; ann aborts and resumes (one download, two
    # requests); one rate-limited denial.
    record("user:dave", at=SINCE, status=DownloadStatus.COMPLETED, bytes_sent=100, fmt="json"),
    record("user:ann", at=day(1, 10), status=DownloadStatus.ABORTED, bytes_sent=40),
    record(
        "user:ann", at=day(1, 11), status=DownloadStatus.COMPLETED, bytes_sent=60, logical=False
    ),
    record("user:carl", at=day(1, 13), status=DownloadStatus.DENIED, denial_code="rate_limited"),
    # 2 March: bob gets parquet; an anonymous download fails after 10 bytes.
    record("user:bob", at=day(2), status=DownloadStatus.COMPLETED, bytes_sent=500, fmt="parquet"),
    record(ANON, at=day(2, 15), status=DownloadStatus.FAILED, bytes_sent=10),
    # 3 March: denials only.
    record("user:carl", at=day(3), status=DownloadStatus.DENIED, denial_code="forbidden"),
    record(ANON, at=day(3, 14), status=DownloadStatus.DENIED, denial_code="auth_required"),
    # 4 March: bob again; eve is still downloading.
    record("user:bob", at=day(4), status=DownloadStatus.COMPLETED, bytes_sent=500),
    record("user:eve", at=day(4, 18), status=DownloadStatus.STARTED, bytes_sent=30),
    # Outside [since, until): just before and exactly at the end.
    record(
        "user:zed",
        at=SINCE - timedelta(microseconds=1),
        status=DownloadStatus.COMPLETED,
        bytes_sent=7_000,
    ),
    record("user:zed", at=UNTIL, status=DownloadStatus.DENIED, denial_code="forbidden"),
]


def test_analytics_totals() -> None:
    """Totals count logical downloads, every allowed request, bytes and outcomes in the window."""
    result = analytics_from_records(SCENARIO, since=SINCE, until=UNTIL)
    assert (result.since, result.until) == (SINCE, UNTIL)
    assert result.downloads == 6
    assert result.requests == 7
    assert result.bytes == 1_240
    assert result.unique_downloaders == 5
    assert (result.completed, result.aborted, result.failures) == (4, 1, 1)
    assert result.denials == 3
    assert result.denials_by_code == {"auth_required": 1, "forbidden": 1, "rate_limited": 1}
    assert result.per_format == {"csv": 4, "json": 1, "parquet": 1}


def test_analytics_per_day_covers_every_day() -> None:
    """The series has one entry per day of the window, empty days included, in order."""
    result = analytics_from_records(SCENARIO, since=SINCE, until=UNTIL)
    assert result.per_day == (
        DayCount(date(2025, 3, 1), downloads=2, requests=3, bytes=200, denials=1, failures=0),
        DayCount(date(2025, 3, 2), downloads=2, requests=2, bytes=510, denials=0, failures=1),
        DayCount(date(2025, 3, 3), downloads=0, requests=0, bytes=0, denials=2, failures=0),
        DayCount(date(2025, 3, 4), downloads=2, requests=2, bytes=530, denials=0, failures=0),
        DayCount(date(2025, 3, 5)),
    )


def test_analytics_top_downloaders() -> None:
    """Top downloaders rank by bytes, then downloads, then key, and respect the limit."""
    result = analytics_from_records(SCENARIO, since=SINCE, until=UNTIL)
    assert result.top_downloaders == (
        TopDownloader("user:bob", "bob", downloads=2, bytes=1_000),
        TopDownloader("user:ann", "ann", downloads=1, bytes=100),
        TopDownloader("user:dave", "dave", downloads=1, bytes=100),
        TopDownloader("user:eve", "eve", downloads=1, bytes=30),
        TopDownloader(ANON, None, downloads=1, bytes=10),
    )
    top_two = analytics_from_records(SCENARIO, since=SINCE, until=UNTIL, top=2)
    assert [t.downloader for t in top_two.top_downloaders] == ["user:bob", "user:ann"]


def test_top_downloaders_break_byte_ties_by_downloads() -> None:
    """Between equal byte counts, more downloads rank first, then the key alphabetically."""
    records = [
        record("user:y", at=day(1), bytes_sent=100),
        record("user:x", at=day(1), bytes_sent=50),
        record("user:x", at=day(2), bytes_sent=50),
        record("user:w", at=day(2), bytes_sent=100),
        record("user:z", at=day(3), bytes_sent=300),
    ]
    result = analytics_from_records(records, since=SINCE, until=UNTIL)
    assert [t.downloader for t in result.top_downloaders] == [
        "user:z",
        "user:x",
        "user:w",
        "user:y",
    ]


def test_analytics_of_nothing() -> None:
    """No records give zero totals and a series of empty days."""
    result = analytics_from_records([], since=SINCE, until=SINCE + timedelta(days=2))
    assert (result.downloads, result.requests, result.bytes, result.unique_downloaders) == (
        0,
        0,
        0,
        0,
    )
    assert result.per_day == (DayCount(date(2025, 3, 1)), DayCount(date(2025, 3, 2)))
    assert result.top_downloaders == ()


def test_analytics_window_ending_mid_day_includes_that_day() -> None:
    """A window that ends during a day still has that day in its series."""
    result = analytics_from_records([], since=SINCE, until=SINCE + timedelta(days=1, hours=6))
    assert [d.day for d in result.per_day] == [date(2025, 3, 1), date(2025, 3, 2)]


# --- analytics properties ----------------------------------------------------------------

DOWNLOADERS = ("user:ann", "user:bob", "user:cat", ANON)


@st.composite
def records_in(draw: st.DrawFn, since: datetime, until: datetime) -> DownloadRecord:
    """A random record started between a day before ``since`` and a day after ``until``."""
    status = draw(st.sampled_from(DownloadStatus))
    denied = status is DownloadStatus.DENIED
    return record(
        draw(st.sampled_from(DOWNLOADERS)),
        at=draw(
            st.datetimes(
                min_value=(since - timedelta(days=1)).replace(tzinfo=None),
                max_value=(until + timedelta(days=1)).replace(tzinfo=None),
                timezones=st.just(UTC),
            )
        ),
        status=status,
        bytes_sent=0 if denied else draw(st.integers(min_value=0, max_value=10_000)),
        logical=False if denied else draw(st.booleans()),
        fmt=draw(st.sampled_from(["original", "csv", "parquet"])),
        denial_code=draw(st.sampled_from(["forbidden", "rate_limited"])) if denied else None,
    )


windows = st.tuples(
    st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2025, 12, 31), timezones=st.just(UTC)
    ),
    st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=40)),
)


@settings(max_examples=150)
@given(windows, st.data())
def test_analytics_totals_match_their_breakdowns(
    window: tuple[datetime, timedelta], data: st.DataObject
) -> None:
    """Totals equal the sums of the series, the formats, the denial codes and the statuses."""
    since, span = window
    until = since + span
    records = data.draw(st.lists(records_in(since, until), max_size=40))
    result = analytics_from_records(records, since=since, until=until)

    assert result.downloads == sum(d.downloads for d in result.per_day)
    assert result.requests == sum(d.requests for d in result.per_day)
    assert result.bytes == sum(d.bytes for d in result.per_day)
    assert result.denials == sum(d.denials for d in result.per_day)
    assert result.failures == sum(d.failures for d in result.per_day)
    assert result.downloads == sum(result.per_format.values())
    assert result.denials == sum(result.denials_by_code.values())
    assert result.completed + result.aborted + result.failures <= result.requests
    assert result.downloads <= result.requests
    assert result.unique_downloaders <= result.requests

    days = [d.day for d in result.per_day]
    assert days[0] == since.date()
    assert days[-1] == (until - timedelta(microseconds=1)).date()
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(days))

    inside = [r for r in records if since <= r.started_at < until]
    allowed = [r for r in inside if r.status is not DownloadStatus.DENIED]
    assert result.requests == len(allowed)
    assert result.unique_downloaders == len({r.downloader for r in allowed})
    if all(r.logical for r in allowed):
        assert result.unique_downloaders <= result.downloads

    ranked = [(-t.bytes, -t.downloads, t.downloader) for t in result.top_downloaders]
    assert ranked == sorted(ranked)
    assert len(result.top_downloaders) == min(10, result.unique_downloaders)
    assert sum(t.bytes for t in result.top_downloaders) == result.bytes
    assert sum(t.downloads for t in result.top_downloaders) == result.downloads


@settings(max_examples=50)
@given(st.lists(records_in(SINCE, UNTIL), max_size=30))
def test_analytics_ignore_record_order(records: list[DownloadRecord]) -> None:
    """The aggregate does not depend on the order records arrive in."""
    forward = analytics_from_records(records, since=SINCE, until=UNTIL)
    backward = analytics_from_records(records[::-1], since=SINCE, until=UNTIL)
    assert forward == backward
