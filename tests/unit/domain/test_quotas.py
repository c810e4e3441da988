"""Tests for quota counters: keys, caps, and the reserve-then-settle arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datadl.domain.policy import QuotaLimit, Window
from datadl.domain.quotas import (
    QuotaCharge,
    QuotaSubject,
    Reservation,
    ReserveOutcome,
    Usage,
    first_refusal,
    settled_amount,
)
from tests.unit.domain.strategies import NOW, ids


def charge(
    bytes_limit: int | None, downloads_limit: int | None, key: str = "quota:acme:user:mia"
) -> QuotaCharge:
    """A counter with the given caps, ending with today's UTC day."""
    return QuotaCharge(
        key=key,
        subject=QuotaSubject.USER,
        bytes_limit=bytes_limit,
        downloads_limit=downloads_limit,
        window_end=Window.DAY.bounds(NOW)[1],
    )


def reservation(bytes: int, downloads: int = 1, *charges: QuotaCharge) -> Reservation:
    """A reservation of ``bytes`` and ``downloads`` on ``charges``."""
    return Reservation(
        id="r1",
        charges=charges,
        bytes=bytes,
        downloads=downloads,
        expires_at=NOW + timedelta(hours=1),
    )


# --- fits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "current", "amount", "fits"),
    [
        ((100, None), Usage(60, 0), (40, 1), True),
        ((100, None), Usage(60, 0), (41, 1), False),
        ((100, None), Usage(100, 0), (0, 1), True),
        ((100, None), Usage(100, 0), (1, 0), False),
        ((0, None), Usage(0, 0), (0, 1), True),
        ((0, None), Usage(0, 0), (1, 1), False),
        ((None, 3), Usage(10**15, 2), (10**15, 1), True),
        ((None, 3), Usage(0, 3), (0, 1), False),
        ((None, 3), Usage(0, 3), (5, 0), True),
        ((100, 3), Usage(100, 2), (0, 1), True),
        ((100, 3), Usage(99, 3), (1, 1), False),
        ((None, None), Usage(10**18, 10**9), (10**18, 10**9), True),
    ],
)
def test_fits_boundaries(
    limits: tuple[int | None, int | None],
    current: Usage,
    amount: tuple[int, int],
    fits: bool,
) -> None:
    """An amount fits when both measures stay at or below their caps, reaching one exactly."""
    assert charge(*limits).fits(current, *amount) is fits


def test_usage_plus() -> None:
    """Usage adds and, with negative amounts, removes bytes and downloads."""
    assert Usage(10, 2).plus(5, 1) == Usage(15, 3)
    assert Usage(10, 2).plus(-10, -2) == Usage()


# --- for_subject -------------------------------------------------------------------------


def test_for_subject_copies_caps_and_window_end() -> None:
    """The charge carries the limit's caps and ends where the window holding now ends."""
    limit = QuotaLimit(bytes=1_000, downloads=7, window=Window.MONTH)
    made = QuotaCharge.for_subject(QuotaSubject.USER, "mia", limit, NOW, organization_id="acme")
    assert made.subject is QuotaSubject.USER
    assert (made.bytes_limit, made.downloads_limit) == (1_000, 7)
    assert made.window_end == datetime(2025, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize("window", list(Window))
def test_for_subject_key_is_stable_within_a_window(window: Window) -> None:
    """Every moment of one window charges the same counter; the next window a fresh one."""
    limit = QuotaLimit(bytes=1, window=window)
    start, end = window.bounds(NOW)

    def key_at(moment: datetime) -> str:
        return QuotaCharge.for_subject(
            QuotaSubject.USER, "mia", limit, moment, organization_id="acme"
        ).key

    assert key_at(start) == key_at(NOW) == key_at(end - timedelta(microseconds=1))
    assert key_at(end) != key_at(NOW)
    assert key_at(start - timedelta(microseconds=1)) != key_at(NOW)


# Often the first of a month, where a day window and a month window start together.
moments = st.sampled_from(
    [datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 1, 23, tzinfo=UTC)]
) | st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
charge_inputs = st.tuples(
    st.sampled_from(["acme", "globex"]) | ids,
    st.sampled_from(QuotaSubject),
    st.sampled_from(["mia", "acme"]) | ids,
    st.sampled_from(Window),
    moments,
)


@given(charge_inputs, charge_inputs)
def test_for_subject_keys_differ_exactly_when_the_counter_differs(
    a: tuple[str, QuotaSubject, str, Window, datetime],
    b: tuple[str, QuotaSubject, str, Window, datetime],
) -> None:
    """Keys agree exactly when organisation, subject, subject id, window and window start agree."""

    def made(org: str, subject: QuotaSubject, who: str, window: Window, now: datetime) -> str:
        limit = QuotaLimit(bytes=1, downloads=1, window=window)
        return QuotaCharge.for_subject(subject, who, limit, now, organization_id=org).key

    def identity(
        org: str, subject: QuotaSubject, who: str, window: Window, now: datetime
    ) -> tuple[object, ...]:
        return (org, subject, who, window, window.bounds(now)[0])

    assert (made(*a) == made(*b)) is (identity(*a) == identity(*b))


@pytest.mark.parametrize(
    "other",
    [
        {"organization_id": "globex"},
        {"subject": QuotaSubject.ORGANIZATION},
        {"subject_id": "max"},
        {"window": Window.MONTH},
        {"now": datetime(2025, 3, 2, 10, tzinfo=UTC)},
    ],
)
def test_for_subject_key_differs_per_part(other: dict[str, object]) -> None:
    """Changing any one of organisation, subject, subject id, window or day changes the key."""
    # On the first of a month the day and month windows start at the same instant.
    base: dict[str, object] = {
        "organization_id": "acme",
        "subject": QuotaSubject.USER,
        "subject_id": "mia",
        "window": Window.DAY,
        "now": datetime(2025, 3, 1, 10, tzinfo=UTC),
    }

    def key(parts: dict[str, object]) -> str:
        limit = QuotaLimit(bytes=1, window=parts["window"])  # type: ignore[arg-type]
        return QuotaCharge.for_subject(
            parts["subject"],  # type: ignore[arg-type]
            parts["subject_id"],  # type: ignore[arg-type]
            limit,
            parts["now"],  # type: ignore[arg-type]
            organization_id=parts["organization_id"],  # type: ignore[arg-type]
        ).key

    assert key(base) != key({**base, **other})


# --- first_refusal and settled_amount ----------------------------------------------------


def test_first_refusal_names_the_first_counter_without_room() -> None:
    """The outcome names the first counter, in order, that cannot take the amount."""
    roomy, tight, tighter = charge(1_000, None, "a"), charge(100, None, "b"), charge(10, None, "c")
    usages = [Usage(0, 0), Usage(95, 1), Usage(5, 1)]
    outcome = first_refusal([roomy, tight, tighter], usages, 10, 1)
    assert outcome == ReserveOutcome.refused_by(tight, Usage(95, 1))
    assert not outcome.ok
    assert first_refusal([roomy, tight, tighter], usages, 5, 1) == ReserveOutcome.accepted()
    assert first_refusal([], [], 10**9, 1).ok


def test_first_refusal_needs_one_usage_per_charge() -> None:
    """Charges and usages must pair up one to one."""
    with pytest.raises(ValueError):  # noqa: PT011 - zip(strict=True) raises a bare ValueError
        first_refusal([charge(1, 1)], [], 0, 1)


@pytest.mark.parametrize(
    ("reserved", "sent", "delta"),
    [
        ((100, 1), 100, (0, 0)),
        ((100, 1), 40, (-60, 0)),
        ((100, 1), 1, (-99, 0)),
        ((100, 1), 0, (-100, -1)),
        ((0, 1), 0, (0, -1)),
    ],
)
def test_settled_amount(reserved: tuple[int, int], sent: int, delta: tuple[int, int]) -> None:
    """Settling swaps reserved bytes for bytes sent; a download that sent nothing is given back."""
    assert settled_amount(reservation(*reserved), sent) == delta


def test_settled_amount_refuses_negative_bytes() -> None:
    """A negative byte count is a programming error."""
    with pytest.raises(ValueError, match="negative"):
        settled_amount(reservation(10), -1)


# --- interleavings -----------------------------------------------------------------------

# An operation: ("reserve", bytes, _), ("complete", which, _) or ("abort", which, percent sent).
operations = st.one_of(
    st.tuples(st.just("reserve"), st.integers(min_value=0, max_value=400), st.just(0)),
    st.tuples(st.just("complete"), st.integers(min_value=0, max_value=30), st.just(0)),
    st.tuples(
        st.just("abort"),
        st.integers(min_value=0, max_value=30),
        st.integers(min_value=0, max_value=100),
    ),
)
caps = st.none() | st.integers(min_value=0, max_value=1_000)
download_caps = st.none() | st.integers(min_value=0, max_value=8)


def _run(charges: list[QuotaCharge], ops: list[tuple[str, int, int]]) -> None:
    """Drive counters held in a plain dict through ``ops`` and check the invariants throughout."""
    counters = {c.key: Usage() for c in charges}
    running: list[Reservation] = []
    delivered: list[int] = []

    def within_caps() -> None:
        for c in charges:
            usage = counters[c.key]
            assert c.bytes_limit is None or usage.bytes <= c.bytes_limit
            assert c.downloads_limit is None or usage.downloads <= c.downloads_limit
            assert usage.bytes >= 0
            assert usage.downloads >= 0

    def settle(res: Reservation, sent: int) -> None:
        d_bytes, d_downloads = settled_amount(res, sent)
        for c in res.charges:
            counters[c.key] = counters[c.key].plus(d_bytes, d_downloads)
        delivered.append(sent)

    for kind, number, percent in ops:
        if kind == "reserve":
            before = dict(counters)
            usages = [counters[c.key] for c in charges]
            outcome = first_refusal(charges, usages, number, 1)
            if outcome.ok:
                for c in charges:
                    counters[c.key] = counters[c.key].plus(number, 1)
                running.append(reservation(number, 1, *charges))
            else:
                assert counters == before
                assert outcome.refused in charges
                assert outcome.usage == counters[outcome.refused.key]  # type: ignore[union-attr]
                # A refusal is only allowed when some counter truly lacks room.
                assert any(
                    (c.bytes_limit is not None and counters[c.key].bytes + number > c.bytes_limit)
                    or (
                        c.downloads_limit is not None
                        and counters[c.key].downloads + 1 > c.downloads_limit
                    )
                    for c in charges
                )
        elif running:
            res = running.pop(number % len(running))
            settle(res, res.bytes if kind == "complete" else res.bytes * percent // 100)
        within_caps()

    for res in running:
        settle(res, res.bytes)
    within_caps()
    for c in charges:
        assert counters[c.key] == Usage(
            bytes=sum(delivered), downloads=sum(1 for sent in delivered if sent > 0)
        )


@settings(max_examples=200)
@given(caps, download_caps, st.lists(operations, max_size=60))
def test_interleaved_downloads_never_overrun_one_counter(
    bytes_limit: int | None, downloads_limit: int | None, ops: list[tuple[str, int, int]]
) -> None:
    """Any interleaving of reserves and settlements stays within caps and ends at what was sent."""
    _run([charge(bytes_limit, downloads_limit)], ops)


@settings(max_examples=100)
@given(caps, download_caps, caps, download_caps, st.lists(operations, max_size=60))
def test_interleaved_downloads_never_overrun_user_and_organization(
    user_bytes: int | None,
    user_downloads: int | None,
    org_bytes: int | None,
    org_downloads: int | None,
    ops: list[tuple[str, int, int]],
) -> None:
    """With a user and an organisation counter, a reservation charges both or neither."""
    _run(
        [
            charge(user_bytes, user_downloads, "quota:acme:user:mia"),
            charge(org_bytes, org_downloads, "quota:acme:organization:acme"),
        ],
        ops,
    )
