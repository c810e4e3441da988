"""Tests for download policies: quota windows, formats, and overrides that only tighten."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.errors import BadRequest
from datadl.domain.policy import (
    DownloadPolicy,
    PolicyOverride,
    QuotaLimit,
    Window,
    check_override,
    effective_policy,
)
from datadl.domain.ratelimit import RateLimit
from tests.unit.domain.strategies import overrides, policies


def utc(*args: int) -> datetime:
    """A UTC datetime."""
    return datetime(*args, tzinfo=UTC)


# --- windows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "now", "start", "end"),
    [
        (Window.DAY, utc(2024, 5, 17, 13, 45), utc(2024, 5, 17), utc(2024, 5, 18)),
        (Window.DAY, utc(2024, 5, 17), utc(2024, 5, 17), utc(2024, 5, 18)),
        (
            Window.DAY,
            utc(2024, 5, 17, 23, 59, 59, 999_999),
            utc(2024, 5, 17),
            utc(2024, 5, 18),
        ),
        (Window.DAY, utc(2024, 2, 28, 10), utc(2024, 2, 28), utc(2024, 2, 29)),
        (Window.DAY, utc(2024, 2, 29, 10), utc(2024, 2, 29), utc(2024, 3, 1)),
        (Window.DAY, utc(2023, 2, 28, 10), utc(2023, 2, 28), utc(2023, 3, 1)),
        (Window.DAY, utc(2024, 12, 31, 18), utc(2024, 12, 31), utc(2025, 1, 1)),
        (Window.DAY, utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 1, 2)),
        (Window.MONTH, utc(2024, 5, 17, 13, 45), utc(2024, 5, 1), utc(2024, 6, 1)),
        (Window.MONTH, utc(2024, 5, 1), utc(2024, 5, 1), utc(2024, 6, 1)),
        (
            Window.MONTH,
            utc(2024, 5, 31, 23, 59, 59, 999_999),
            utc(2024, 5, 1),
            utc(2024, 6, 1),
        ),
        (Window.MONTH, utc(2024, 12, 1), utc(2024, 12, 1), utc(2025, 1, 1)),
        (Window.MONTH, utc(2024, 12, 31, 23, 59), utc(2024, 12, 1), utc(2025, 1, 1)),
        (Window.MONTH, utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 2, 1)),
        (Window.MONTH, utc(2024, 2, 29, 12), utc(2024, 2, 1), utc(2024, 3, 1)),
        (Window.MONTH, utc(2023, 2, 14), utc(2023, 2, 1), utc(2023, 3, 1)),
        (Window.MONTH, utc(2024, 1, 31, 8), utc(2024, 1, 1), utc(2024, 2, 1)),
    ],
)
def test_window_bounds(window: Window, now: datetime, start: datetime, end: datetime) -> None:
    """A window is the UTC calendar day or month holding now, start inclusive, end exclusive."""
    assert window.bounds(now) == (start, end)


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        (Window.DAY, utc(2024, 2, 29), utc(2024, 3, 1)),
        (Window.MONTH, utc(2024, 2, 1), utc(2024, 3, 1)),
    ],
)
def test_window_bounds_are_taken_in_utc(window: Window, start: datetime, end: datetime) -> None:
    """A time given in another zone falls in the UTC window of the same instant."""
    # 01:30 on 1 March at +02:00 is 23:30 on 29 February in UTC.
    now = datetime(2024, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window.bounds(now) == (start, end)


@given(
    st.sampled_from(Window),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ),
)
def test_window_bounds_tile_time(window: Window, now: datetime) -> None:
    """Windows hold now, start at UTC midnight, have calendar length and abut the next one."""
    start, end = window.bounds(now)
    assert start <= now < end
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    assert start.utcoffset() == timedelta(0)
    if window is Window.DAY:
        assert end - start == timedelta(days=1)
    else:
        assert start.day == 1
        assert end.day == 1
        assert timedelta(days=28) <= end - start <= timedelta(days=31)
    assert window.bounds(start) == (start, end)
    assert window.bounds(end)[0] == end
    assert window.bounds(end - timedelta(microseconds=1)) == (start, end)


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "requested", "original", "expected"),
    [
        (None, "original", "csv", True),
        (None, "xlsx", "csv", True),
        (frozenset({"original"}), "original", "csv", True),
        (frozenset({"parquet"}), "original", "parquet", True),
        (frozenset({"parquet"}), "original", "csv", False),
        (frozenset({"csv"}), "csv", "parquet", True),
        (frozenset({"csv"}), "parquet", "parquet", False),
        (frozenset({"csv", "json"}), "jsonl", "csv", False),
        (frozenset(), "original", "csv", False),
        (frozenset(), "csv", "csv", False),
    ],
)
def test_allows_format(
    allowed: frozenset[str] | None, requested: str, original: str, expected: bool
) -> None:
    """A listed format is allowed; ``original`` also when the file's own format is listed."""
    policy = DownloadPolicy(allowed_formats=allowed)
    assert policy.allows_format(requested, original) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_formats": frozenset({"csv", "docx"})},
        {"max_download_bytes": -1},
        {"token_max_ttl_seconds": 0},
        {"audit_retention_days": 0},
    ],
)
def test_download_policy_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    """Unknown formats, negative caps and non-positive lifetimes are not a policy."""
    with pytest.raises(ValueError):  # noqa: PT011 - attrs validators raise plain ValueError
        DownloadPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_formats": frozenset({"pdf"})},
        {"max_download_bytes": -1},
        {"token_max_ttl_seconds": 0},
        {"token_max_ttl_seconds": -5},
        {"audit_retention_days": 0},
    ],
)
def test_policy_override_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    """An override cannot hold an unknown format, a negative cap or a non-positive lifetime."""
    # A zero lifetime would pass check_override and then break effective_policy for good.
    with pytest.raises(ValueError):  # noqa: PT011 - attrs validators raise plain ValueError
        PolicyOverride(**kwargs)  # type: ignore[arg-type]


def test_quota_limit_unlimited() -> None:
    """A quota limit is unlimited only when neither bytes nor downloads is capped."""
    assert QuotaLimit().unlimited
    assert not QuotaLimit(bytes=0).unlimited
    assert not QuotaLimit(downloads=10).unlimited


# --- effective policy --------------------------------------------------------------------


def _cap_at_most(value: int | None, bound: int | None) -> bool:
    """Whether cap ``value`` is at most ``bound``, None meaning no cap."""
    if bound is None:
        return True
    return value is not None and value <= bound


def _assert_at_least_as_strict(
    effective: DownloadPolicy, source: DownloadPolicy | PolicyOverride
) -> None:
    if source.allowed_formats is not None:
        assert effective.allowed_formats is not None
        assert effective.allowed_formats <= source.allowed_formats
    assert _cap_at_most(effective.max_download_bytes, source.max_download_bytes)
    if source.allow_anonymous is False:
        assert effective.allow_anonymous is False
    if source.require_token is True:
        assert effective.require_token is True
    if source.token_max_ttl_seconds is not None:
        assert effective.token_max_ttl_seconds <= source.token_max_ttl_seconds
    if source.audit_retention_days is not None:
        assert effective.audit_retention_days <= source.audit_retention_days
    if source.rate_limit is not None:
        assert effective.rate_limit is not None
        assert effective.rate_limit.requests <= source.rate_limit.requests
        assert effective.rate_limit.per_seconds >= source.rate_limit.per_seconds
    for name in ("user_quota", "organization_quota"):
        quota, tight = getattr(source, name), getattr(effective, name)
        if quota is not None:
            assert tight is not None
            assert _cap_at_most(tight.bytes, quota.bytes)
            assert _cap_at_most(tight.downloads, quota.downloads)
    if source.terms:
        assert effective.terms is not None
        assert source.terms in effective.terms


@given(policies, overrides)
def test_effective_policy_is_never_looser_than_either_input(
    base: DownloadPolicy, override: PolicyOverride
) -> None:
    """Every field of the effective policy is at least as strict as the base and the override."""
    effective = effective_policy(base, override)
    _assert_at_least_as_strict(effective, base)
    _assert_at_least_as_strict(effective, override)


@given(policies, overrides)
def test_anonymous_download_needs_both_to_allow_it(
    base: DownloadPolicy, override: PolicyOverride
) -> None:
    """Anonymous download needs both sides to allow it; a token is needed if either asks."""
    effective = effective_policy(base, override)
    assert effective.allow_anonymous is (
        base.allow_anonymous and override.allow_anonymous is not False
    )
    assert effective.require_token is (base.require_token or override.require_token is True)


@given(policies)
def test_effective_policy_without_override_is_the_base(base: DownloadPolicy) -> None:
    """With no dataset policy, or an empty one, the organisation's policy applies unchanged."""
    assert effective_policy(base, None) == base
    assert effective_policy(base, PolicyOverride()) == base


def test_effective_policy_combines_each_field() -> None:
    """A worked example: formats intersect, caps take the minimum, terms are both kept."""
    base = DownloadPolicy(
        allowed_formats=frozenset({"original", "csv", "parquet"}),
        max_download_bytes=1_000,
        allow_anonymous=True,
        require_token=False,
        token_max_ttl_seconds=3_600,
        terms="Cite Acme.",
        rate_limit=RateLimit(requests=60, per_seconds=60),
        user_quota=QuotaLimit(bytes=10_000, downloads=None, window=Window.DAY),
        organization_quota=None,
        audit_retention_days=365,
    )
    override = PolicyOverride(
        allowed_formats=frozenset({"csv", "json"}),
        max_download_bytes=5_000,
        allow_anonymous=False,
        require_token=True,
        token_max_ttl_seconds=600,
        terms="No resale.",
        rate_limit=RateLimit(requests=100, per_seconds=30),
        user_quota=QuotaLimit(bytes=None, downloads=5, window=Window.DAY),
        organization_quota=QuotaLimit(bytes=1, downloads=None, window=Window.MONTH),
        audit_retention_days=30,
    )
    assert effective_policy(base, override) == DownloadPolicy(
        allowed_formats=frozenset({"csv"}),
        max_download_bytes=1_000,
        allow_anonymous=False,
        require_token=True,
        token_max_ttl_seconds=600,
        terms="Cite Acme.\n\nNo resale.",
        rate_limit=RateLimit(requests=60, per_seconds=60),
        user_quota=QuotaLimit(bytes=10_000, downloads=5, window=Window.DAY),
        organization_quota=QuotaLimit(bytes=1, downloads=None, window=Window.MONTH),
        audit_retention_days=30,
    )


@pytest.mark.parametrize(
    ("base_terms", "override_terms", "expected"),
    [
        (None, None, None),
        ("Cite Acme.", None, "Cite Acme."),
        ("Cite Acme.", "", "Cite Acme."),
        (None, "No resale.", "No resale."),
        ("", "No resale.", "No resale."),
    ],
)
def test_effective_terms(
    base_terms: str | None, override_terms: str | None, expected: str | None
) -> None:
    """Terms from either side apply; an empty text adds nothing."""
    effective = effective_policy(
        DownloadPolicy(terms=base_terms), PolicyOverride(terms=override_terms)
    )
    assert effective.terms == expected


# --- check_override ----------------------------------------------------------------------

STRICT_BASE = DownloadPolicy(
    allowed_formats=frozenset({"original", "csv"}),
    max_download_bytes=1_000,
    allow_anonymous=False,
    require_token=True,
    token_max_ttl_seconds=3_600,
    rate_limit=RateLimit(requests=60, per_seconds=60),
    user_quota=QuotaLimit(bytes=10_000, downloads=10, window=Window.DAY),
    organization_quota=QuotaLimit(bytes=100_000, downloads=100, window=Window.MONTH),
    audit_retention_days=90,
)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (PolicyOverride(allowed_formats=frozenset({"csv", "parquet"})), "allowed_formats"),
        (PolicyOverride(max_download_bytes=1_001), "max_download_bytes"),
        (PolicyOverride(allow_anonymous=True), "allow_anonymous"),
        (PolicyOverride(require_token=False), "require_token"),
        (PolicyOverride(token_max_ttl_seconds=3_601), "token_max_ttl_seconds"),
        (PolicyOverride(audit_retention_days=91), "audit_retention_days"),
        (PolicyOverride(rate_limit=RateLimit(requests=61, per_seconds=60)), "rate_limit"),
        (PolicyOverride(rate_limit=RateLimit(requests=60, per_seconds=59)), "rate_limit"),
        (
            PolicyOverride(user_quota=QuotaLimit(bytes=10_001, downloads=10, window=Window.DAY)),
            "quota.user",
        ),
        (
            PolicyOverride(user_quota=QuotaLimit(bytes=10_000, downloads=11, window=Window.DAY)),
            "quota.user",
        ),
        (
            PolicyOverride(user_quota=QuotaLimit(bytes=1, downloads=1, window=Window.MONTH)),
            "quota.user.window",
        ),
        (
            PolicyOverride(
                organization_quota=QuotaLimit(bytes=100_001, downloads=1, window=Window.MONTH)
            ),
            "quota.organization",
        ),
        (
            PolicyOverride(
                organization_quota=QuotaLimit(bytes=1, downloads=101, window=Window.MONTH)
            ),
            "quota.organization",
        ),
        (
            PolicyOverride(organization_quota=QuotaLimit(window=Window.DAY)),
            "quota.organization.window",
        ),
    ],
)
def test_check_override_refuses_each_loosening(override: PolicyOverride, field: str) -> None:
    """Each kind of loosening is refused with a bad request that names the field."""
    with pytest.raises(BadRequest) as caught:
        check_override(STRICT_BASE, override)
    assert caught.value.code == "bad_request"
    assert field in caught.value.message


def test_check_override_names_every_loosened_field() -> None:
    """Several loosenings in one override are all reported at once."""
    override = PolicyOverride(max_download_bytes=2_000, allow_anonymous=True, require_token=False)
    with pytest.raises(BadRequest) as caught:
        check_override(STRICT_BASE, override)
    for field in ("max_download_bytes", "allow_anonymous", "require_token"):
        assert field in caught.value.message


@pytest.mark.parametrize(
    "override",
    [
        PolicyOverride(),
        PolicyOverride(allowed_formats=frozenset({"original", "csv"})),
        PolicyOverride(allowed_formats=frozenset()),
        PolicyOverride(max_download_bytes=1_000),
        PolicyOverride(max_download_bytes=0),
        PolicyOverride(allow_anonymous=False),
        PolicyOverride(require_token=True),
        PolicyOverride(token_max_ttl_seconds=3_600),
        PolicyOverride(audit_retention_days=90),
        PolicyOverride(terms="Also cite the paper."),
        PolicyOverride(rate_limit=RateLimit(requests=60, per_seconds=60)),
        PolicyOverride(rate_limit=RateLimit(requests=1, per_seconds=3_600)),
        PolicyOverride(user_quota=QuotaLimit(bytes=10_000, downloads=10, window=Window.DAY)),
        PolicyOverride(user_quota=QuotaLimit(bytes=None, downloads=None, window=Window.DAY)),
        PolicyOverride(organization_quota=QuotaLimit(bytes=5, window=Window.MONTH)),
    ],
)
def test_check_override_accepts_equal_or_tighter_values(override: PolicyOverride) -> None:
    """Values equal to or stricter than the organisation's, or left out, are accepted."""
    check_override(STRICT_BASE, override)


def test_check_override_accepts_caps_where_the_base_has_none() -> None:
    """Where the organisation sets no cap, any cap in the override tightens it."""
    override = PolicyOverride(
        allowed_formats=frozenset({"xlsx"}),
        max_download_bytes=10**15,
        token_max_ttl_seconds=1,
        rate_limit=RateLimit(requests=10**6, per_seconds=1),
        user_quota=QuotaLimit(bytes=10**15, window=Window.MONTH),
    )
    check_override(DownloadPolicy(), override)


def _field_survives(effective: DownloadPolicy, override: PolicyOverride, name: str) -> bool:
    wanted, got = getattr(override, name), getattr(effective, name)
    if wanted is None or name == "terms":
        return True
    if isinstance(wanted, QuotaLimit):
        return (
            got.window is wanted.window
            and (wanted.bytes is None or got.bytes == wanted.bytes)
            and (wanted.downloads is None or got.downloads == wanted.downloads)
        )
    return bool(got == wanted)


@given(policies, overrides)
def test_check_override_accepts_exactly_the_overrides_that_take_effect(
    base: DownloadPolicy, override: PolicyOverride
) -> None:
    """An override passes exactly when every value it sets is the value that takes effect."""
    effective = effective_policy(base, override)
    takes_effect = all(
        _field_survives(effective, override, f.name) for f in attrs.fields(PolicyOverride)
    )
    if takes_effect:
        check_override(base, override)
    else:
        with pytest.raises(BadRequest):
            check_override(base, override)


@given(policies, overrides)
def test_projecting_an_override_onto_its_base_gives_an_accepted_one(
    base: DownloadPolicy, override: PolicyOverride
) -> None:
    """Each set field replaced by its effective value gives an accepted, equivalent override."""
    effective = effective_policy(base, override)
    projected = PolicyOverride(
        **{
            f.name: None if getattr(override, f.name) is None else getattr(effective, f.name)
            for f in attrs.fields(PolicyOverride)
            if f.name != "terms"
        },
        terms=override.terms,
    )
    check_override(base, projected)
    assert effective_policy(base, projected) == effective
