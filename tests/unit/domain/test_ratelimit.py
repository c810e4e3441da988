"""Tests for GCRA rate limiting and the RateLimit header fields."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.ratelimit import RateDecision, RateLimit, gcra, ratelimit_fields

EPOCH = 1_700_000_000.0

limits = st.builds(
    RateLimit,
    requests=st.integers(min_value=1, max_value=100),
    per_seconds=st.one_of(
        st.sampled_from([1.0, 1.5, 7.0, 60.0, 3600.0]),
        st.floats(min_value=1.0, max_value=3600.0),
    ),
)


@st.composite
def limit_and_times(draw: st.DrawFn) -> tuple[RateLimit, list[float]]:
    """A limit and a nondecreasing run of request times, often on interval boundaries."""
    limit = draw(limits)
    interval = limit.emission_interval
    gap = st.one_of(
        st.just(0.0),
        st.integers(min_value=1, max_value=3).map(lambda k: k * interval),
        st.floats(min_value=0.0, max_value=2 * limit.per_seconds),
    )
    now = draw(st.sampled_from([0.0, EPOCH]))
    times = []
    for step in draw(st.lists(gap, min_size=1, max_size=80)):
        now += step
        times.append(now)
    return limit, times


@st.composite
def exact_limits(draw: st.DrawFn) -> RateLimit:
    """A limit whose interval is a power of two, so that all arithmetic below is exact."""
    requests = draw(st.integers(min_value=1, max_value=64))
    interval = 2.0 ** draw(st.integers(min_value=-4, max_value=4))
    return RateLimit(requests, requests * interval)


@st.composite
def exact_state(draw: st.DrawFn) -> tuple[RateLimit, float | None, float]:
    """An exact limit, the state some admitted requests left, and a later instant."""
    limit = draw(exact_limits())
    grid = limit.emission_interval / 4
    now = EPOCH
    tat: float | None = None
    for steps in draw(st.lists(st.integers(min_value=0, max_value=8), max_size=40)):
        now += steps * grid
        decision = gcra(limit, tat, now)
        if decision.allowed:
            tat = decision.new_tat
    now += draw(st.integers(min_value=0, max_value=8)) * grid
    return limit, tat, now


def run(limit: RateLimit, times: list[float]) -> tuple[list[float], list[RateDecision]]:
    """Feed times through gcra, storing state as a caller would; return admitted times."""
    tat: float | None = None
    admitted: list[float] = []
    decisions: list[RateDecision] = []
    for now in times:
        decision = gcra(limit, tat, now)
        decisions.append(decision)
        if decision.allowed:
            assert decision.new_tat is not None
            tat = decision.new_tat
            admitted.append(now)
    return admitted, decisions


def burst(limit: RateLimit, now: float, tat: float | None = None) -> float | None:
    """Spend a full burst at ``now``, asserting every request is admitted; return the state."""
    for left in range(limit.requests - 1, -1, -1):
        decision = gcra(limit, tat, now)
        assert decision.allowed
        assert decision.remaining == left
        tat = decision.new_tat
    return tat


@pytest.mark.parametrize(
    ("requests", "per_seconds", "error"),
    [
        (0, 60.0, ValueError),
        (-1, 60.0, ValueError),
        (2**53 + 1, 60.0, ValueError),
        (True, 60.0, TypeError),
        (1.0, 60.0, TypeError),
        (10, 0.0, ValueError),
        (10, -1.0, ValueError),
        (10, math.inf, ValueError),
        (10, math.nan, ValueError),
        (10, "60", TypeError),
        (2**40, 5e-324, ValueError),
    ],
)
def test_rate_limit_rejects_invalid_values(
    requests: object, per_seconds: object, error: type[Exception]
) -> None:
    """A RateLimit cannot be built with a non-positive, non-finite or mistyped field."""
    with pytest.raises(error):
        RateLimit(requests, per_seconds)  # type: ignore[arg-type]


def test_emission_interval_spreads_the_period_over_the_burst() -> None:
    """The emission interval is the period divided by the number of requests."""
    assert RateLimit(60, 60.0).emission_interval == 1.0
    assert RateLimit(4, 1.0).emission_interval == 0.25


def test_fresh_key_is_admitted_with_the_full_burst_left() -> None:
    """A key with no state admits its first request and reports the rest of the burst."""
    decision = gcra(RateLimit(10, 5.0), None, EPOCH)
    assert decision == RateDecision(
        allowed=True, new_tat=EPOCH + 0.5, limit=10, remaining=9, reset_after=0.5, retry_after=0.0
    )


def test_state_in_the_past_counts_as_a_fresh_key() -> None:
    """A stored TAT older than now gives the same decision as no state at all."""
    limit = RateLimit(5, 10.0)
    assert gcra(limit, EPOCH - 100.0, EPOCH) == gcra(limit, None, EPOCH)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_gcra_rejects_non_finite_times(bad: float) -> None:
    """A non-finite clock reading or state is refused rather than silently admitted."""
    limit = RateLimit(5, 10.0)
    with pytest.raises(ValueError, match="now"):
        gcra(limit, None, bad)
    with pytest.raises(ValueError, match="tat"):
        gcra(limit, bad, EPOCH)


@given(limit_and_times())
def test_no_window_admits_more_than_burst_plus_refill(case: tuple[RateLimit, list[float]]) -> None:
    """However requests arrive, any window of W seconds admits at most requests + W / T."""
    limit, times = case
    admitted, _ = run(limit, times)
    interval = limit.emission_interval
    # A float timestamp is only as fine as its last bit; grant a few ulps per stored update.
    slack = 4 * (limit.requests + len(times)) * math.ulp(max(times[-1], limit.per_seconds))
    for first in range(len(admitted)):
        for last in range(first, len(admitted)):
            window = admitted[last] - admitted[first]
            count = last - first + 1
            assert count <= limit.requests + (window + slack) / interval


@given(limit_and_times())
def test_denial_leaves_state_unchanged(case: tuple[RateLimit, list[float]]) -> None:
    """A denied decision offers no new state, so asking again gives the same answer."""
    limit, times = case
    tat: float | None = None
    for now in times:
        decision = gcra(limit, tat, now)
        if decision.allowed:
            assert decision.retry_after == 0.0
            tat = decision.new_tat
        else:
            assert decision.new_tat is None
            assert decision.remaining == 0
            assert decision.retry_after > 0
            assert gcra(limit, tat, now) == decision


@pytest.mark.parametrize(
    ("requests", "per_seconds", "start"),
    [
        (1, 1.0, EPOCH),
        (3, 1.0, EPOCH),
        (60, 60.0, EPOCH),
        (7, 0.1, EPOCH),
        (100, 3600.0, EPOCH),
        (100, 1.0, EPOCH + 0.123),
        (10, 3.0, 0.0),
    ],
)
def test_full_burst_then_denial_then_full_refill(
    requests: int, per_seconds: float, start: float
) -> None:
    """A full burst is admitted at once, the next waits one interval, and per_seconds later
    the whole burst is available again."""
    limit = RateLimit(requests, per_seconds)
    tat = burst(limit, start)
    denied = gcra(limit, tat, start)
    assert not denied.allowed
    # Epoch-sized floats resolve only about 0.2 µs, which repeated additions accumulate.
    assert denied.retry_after == pytest.approx(limit.emission_interval, rel=1e-3)
    assert denied.reset_after == pytest.approx(per_seconds, rel=1e-3)
    assert gcra(limit, tat, start + denied.retry_after).allowed
    tat = burst(limit, start + per_seconds, tat)
    assert not gcra(limit, tat, start + per_seconds).allowed


def test_rate_is_one_request_per_interval_once_the_burst_is_spent() -> None:
    """After the burst, exactly one request per emission interval gets through."""
    limit = RateLimit(3, 1.0)
    tat = burst(limit, EPOCH)
    for step in range(1, 50):
        now = EPOCH + step * limit.emission_interval
        admitted = gcra(limit, tat, now)
        assert admitted.allowed
        assert admitted.remaining == 0
        tat = admitted.new_tat
        assert not gcra(limit, tat, now).allowed


def test_coarse_clock_never_widens_the_burst() -> None:
    """When the interval is only a few float steps of the clock, a burst is still exact."""
    # At epoch-sized times a float resolves 2**-22 s; this interval is four such steps.
    interval = 2.0**-20
    limit = RateLimit(1024, 1024 * interval)
    tat = burst(limit, EPOCH)
    assert not gcra(limit, tat, EPOCH).allowed


def test_interval_finer_than_the_clock_still_limits() -> None:
    """An interval below the float resolution of the clock never lets requests through free."""
    limit = RateLimit(10_000, 1e-3)
    assert limit.emission_interval < math.ulp(EPOCH)
    tat: float | None = None
    admitted = 0
    for _ in range(limit.requests + 1):
        decision = gcra(limit, tat, EPOCH)
        if not decision.allowed:
            break
        assert decision.new_tat is not None
        assert tat is None or decision.new_tat > tat
        tat = decision.new_tat
        admitted += 1
    assert 0 < admitted <= limit.requests


@given(exact_state())
def test_remaining_counts_what_is_admitted_right_now(
    state: tuple[RateLimit, float | None, float],
) -> None:
    """After an admitted request, exactly ``remaining`` more are admitted at the same instant."""
    limit, tat, now = state
    decision = gcra(limit, tat, now)
    if not decision.allowed:
        return
    tat = decision.new_tat
    for _ in range(decision.remaining):
        follow = gcra(limit, tat, now)
        assert follow.allowed
        tat = follow.new_tat
    assert not gcra(limit, tat, now).allowed


@given(exact_state())
def test_bucket_is_full_after_reset_after(state: tuple[RateLimit, float | None, float]) -> None:
    """Waiting ``reset_after`` seconds, and no less, brings the key back to a fresh one."""
    limit, tat, now = state
    decision = gcra(limit, tat, now)
    stored = decision.new_tat if decision.allowed else tat
    later = now + decision.reset_after
    assert gcra(limit, stored, later) == gcra(limit, None, later)
    sooner = later - limit.emission_interval / 2
    assert gcra(limit, stored, sooner) != gcra(limit, None, sooner)


@given(exact_state())
def test_retry_after_is_the_earliest_admission(
    state: tuple[RateLimit, float | None, float],
) -> None:
    """A denied request is admitted after ``retry_after`` seconds and not noticeably sooner."""
    limit, tat, now = state
    decision = gcra(limit, tat, now)
    if decision.allowed:
        return
    assert gcra(limit, tat, now + decision.retry_after).allowed
    assert not gcra(limit, tat, now + decision.retry_after - limit.emission_interval / 4).allowed


def test_header_fields_for_an_admitted_request() -> None:
    """An admitted request reports quota, window, remaining quota and reset in seconds."""
    limit = RateLimit(60, 60.0)
    fields = ratelimit_fields(limit, gcra(limit, None, EPOCH))
    assert fields == {"RateLimit-Policy": '"default";q=60;w=60', "RateLimit": '"default";r=59;t=1'}


def test_header_fields_round_seconds_up() -> None:
    """Fractional windows and reset times are rounded up so clients never retry too early."""
    limit = RateLimit(4, 2.5)
    tat = gcra(limit, None, EPOCH).new_tat
    fields = ratelimit_fields(limit, gcra(limit, tat, EPOCH), name="api")
    assert fields == {"RateLimit-Policy": '"api";q=4;w=3', "RateLimit": '"api";r=2;t=2'}


def test_header_fields_for_a_denied_request_give_the_retry_time() -> None:
    """A denied request reports no remaining quota and the rounded-up wait to retry."""
    limit = RateLimit(2, 5.0)
    tat = burst(limit, EPOCH)
    denied = gcra(limit, tat, EPOCH + 0.4)
    assert denied.retry_after == pytest.approx(2.1)
    assert ratelimit_fields(limit, denied)["RateLimit"] == '"default";r=0;t=3'


def test_header_policy_name_is_escaped_as_a_structured_string() -> None:
    """Quotes and backslashes in the policy name are escaped per RFC 8941."""
    limit = RateLimit(1, 1.0)
    fields = ratelimit_fields(limit, gcra(limit, None, 0.0), name='a"b\\c')
    assert fields["RateLimit"] == '"a\\"b\\\\c";r=0;t=1'


@pytest.mark.parametrize("name", ["tab\there", "naïve", "line\n"])
def test_header_policy_name_must_be_printable_ascii(name: str) -> None:
    """A name a structured-field string cannot carry is refused."""
    limit = RateLimit(1, 1.0)
    with pytest.raises(ValueError, match="printable ASCII"):
        ratelimit_fields(limit, gcra(limit, None, 0.0), name=name)
