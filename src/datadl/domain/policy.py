"""Download policies: an organisation's rules, tightened (never loosened) per dataset."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import attrs

from datadl.domain.errors import BadRequest
from datadl.domain.model import EXPORT_FORMATS
from datadl.domain.ratelimit import RateLimit

T = TypeVar("T")


class Window(enum.StrEnum):
    """A quota window; both are calendar periods in UTC."""

    DAY = "day"
    MONTH = "month"

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """The start (inclusive) and end (exclusive) of the window holding ``now``."""
        now = now.astimezone(UTC)
        if self is Window.DAY:
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + timedelta(days=1)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)


def _optional_positive(_inst: object, attr: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attr.name} must not be negative")


def _optional_above_zero(
    _inst: object, attr: attrs.Attribute[int | None], value: int | None
) -> None:
    # DownloadPolicy refuses zero here, so an override holding zero would break every download.
    if value is not None and value <= 0:
        raise ValueError(f"{attr.name} must be positive")


@attrs.frozen
class QuotaLimit:
    """Bytes and downloads allowed per window; ``None`` means no cap on that measure."""

    bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    downloads: int | None = attrs.field(default=None, validator=_optional_positive)
    window: Window = Window.DAY

    @property
    def unlimited(self) -> bool:
        """Whether neither measure is capped."""
        return self.bytes is None and self.downloads is None


def _check_formats(
    _inst: object, _attr: attrs.Attribute[frozenset[str] | None], value: frozenset[str] | None
) -> None:
    if value is not None:
        unknown = set(value) - set(EXPORT_FORMATS)
        if unknown:
            raise ValueError(f"unknown formats: {sorted(unknown)}")


@attrs.frozen
class DownloadPolicy:
    """An organisation's rules for downloading its datasets.

    ``allowed_formats`` names delivered formats (``original`` included); ``None`` allows
    every format. A request for ``original`` is allowed when ``original`` or the stored
    file's own format is listed. ``neutralize_formulas`` prefixes csv and tsv cells that a
    spreadsheet would run as formulas (OWASP CSV injection) in converted downloads.
    """

    allowed_formats: frozenset[str] | None = attrs.field(default=None, validator=_check_formats)
    max_download_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    allow_anonymous: bool = True
    require_token: bool = False
    token_max_ttl_seconds: int = 86_400
    terms: str | None = None
    rate_limit: RateLimit | None = None
    user_quota: QuotaLimit | None = None
    organization_quota: QuotaLimit | None = None
    audit_retention_days: int = 365
    neutralize_formulas: bool = False

    def __attrs_post_init__(self) -> None:
        if self.token_max_ttl_seconds <= 0:
            raise ValueError("token_max_ttl_seconds must be positive")
        if self.audit_retention_days <= 0:
            raise ValueError("audit_retention_days must be positive")

    def allows_format(self, requested: str, original_format: str) -> bool:
        """Whether a request for ``requested`` may be served under this policy."""
        if self.allowed_formats is None:
            return True
        if requested in self.allowed_formats:
            return True
        return requested == "original" and original_format in self.allowed_formats


@attrs.frozen
class PolicyOverride:
    """A dataset's own policy: every field optional; it can only tighten its organisation's.

    Quota overrides lower the caps on the organisation's counters; their window is the
    organisation's, so an override naming another window is refused.
    """

    allowed_formats: frozenset[str] | None = attrs.field(default=None, validator=_check_formats)
    max_download_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    allow_anonymous: bool | None = None
    require_token: bool | None = None
    token_max_ttl_seconds: int | None = attrs.field(default=None, validator=_optional_above_zero)
    terms: str | None = None
    rate_limit: RateLimit | None = None
    user_quota: QuotaLimit | None = None
    organization_quota: QuotaLimit | None = None
    audit_retention_days: int | None = attrs.field(default=None, validator=_optional_above_zero)
    neutralize_formulas: bool | None = None


def _min_optional(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _tighter_quota(base: QuotaLimit | None, override: QuotaLimit | None) -> QuotaLimit | None:
    if override is None:
        return base
    if base is None:
        return override
    return QuotaLimit(
        bytes=_min_optional(base.bytes, override.bytes),
        downloads=_min_optional(base.downloads, override.downloads),
        window=base.window,
    )


def _tighter_rate(base: RateLimit | None, override: RateLimit | None) -> RateLimit | None:
    if override is None:
        return base
    if base is None:
        return override
    # Fewer requests over a longer period is at least as strict as both in burst and rate.
    return RateLimit(
        requests=min(base.requests, override.requests),
        per_seconds=max(base.per_seconds, override.per_seconds),
    )


def _pick(value: T | None, fallback: T, tighten: Callable[[T, T], T]) -> T:
    return fallback if value is None else tighten(fallback, value)


def effective_policy(base: DownloadPolicy, override: PolicyOverride | None) -> DownloadPolicy:
    """The policy that applies to one dataset: its organisation's, tightened by its own.

    Every field combines so that the result is at least as strict as both inputs:
    intersection of formats, smaller caps, anonymous only if both allow it, a token if
    either requires one, both sets of terms, formulas neutralised if either says so.
    """
    if override is None:
        return base
    formats: frozenset[str] | None
    if base.allowed_formats is None:
        formats = override.allowed_formats
    elif override.allowed_formats is None:
        formats = base.allowed_formats
    else:
        formats = base.allowed_formats & override.allowed_formats
    terms = base.terms
    if override.terms:
        terms = f"{base.terms}\n\n{override.terms}" if base.terms else override.terms
    return DownloadPolicy(
        allowed_formats=formats,
        max_download_bytes=_min_optional(base.max_download_bytes, override.max_download_bytes),
        allow_anonymous=_pick(override.allow_anonymous, base.allow_anonymous, lambda a, b: a and b),
        require_token=_pick(override.require_token, base.require_token, lambda a, b: a or b),
        token_max_ttl_seconds=_pick(
            override.token_max_ttl_seconds, base.token_max_ttl_seconds, min
        ),
        terms=terms,
        rate_limit=_tighter_rate(base.rate_limit, override.rate_limit),
        user_quota=_tighter_quota(base.user_quota, override.user_quota),
        organization_quota=_tighter_quota(base.organization_quota, override.organization_quota),
        audit_retention_days=_pick(override.audit_retention_days, base.audit_retention_days, min),
        neutralize_formulas=_pick(
            override.neutralize_formulas, base.neutralize_formulas, lambda a, b: a or b
        ),
    )


def check_override(base: DownloadPolicy, override: PolicyOverride) -> None:
    """Refuse an override that would loosen its organisation's policy, naming the field.

    ``effective_policy`` would ignore the loosening anyway; refusing it tells the owner
    that the setting has no effect instead of letting them believe it does.
    """
    problems: list[str] = []
    if override.allowed_formats is not None and base.allowed_formats is not None:
        extra = override.allowed_formats - base.allowed_formats
        if extra:
            problems.append(f"allowed_formats adds {sorted(extra)}")
    if _looser(base.max_download_bytes, override.max_download_bytes):
        problems.append("max_download_bytes is above the organisation's")
    if override.allow_anonymous and not base.allow_anonymous:
        problems.append("allow_anonymous is false for the organisation")
    if override.require_token is False and base.require_token:
        problems.append("require_token is true for the organisation")
    if override.neutralize_formulas is False and base.neutralize_formulas:
        problems.append("neutralize_formulas is true for the organisation")
    if _looser(base.token_max_ttl_seconds, override.token_max_ttl_seconds):
        problems.append("token_max_ttl_seconds is above the organisation's")
    if _looser(base.audit_retention_days, override.audit_retention_days):
        problems.append("audit_retention_days is above the organisation's")
    if override.rate_limit is not None and base.rate_limit is not None:
        looser_rate = override.rate_limit.requests > base.rate_limit.requests or (
            override.rate_limit.per_seconds < base.rate_limit.per_seconds
        )
        if looser_rate:
            problems.append("rate_limit allows more than the organisation's")
    for name, b, o in (
        ("user", base.user_quota, override.user_quota),
        ("organization", base.organization_quota, override.organization_quota),
    ):
        if o is None or b is None:
            continue
        if o.window is not b.window:
            problems.append(f"quota.{name}.window must be the organisation's ({b.window})")
        if _looser(b.bytes, o.bytes) or _looser(b.downloads, o.downloads):
            problems.append(f"quota.{name} is above the organisation's")
    if problems:
        raise BadRequest(
            "A dataset policy can only tighten its organisation's: " + "; ".join(problems) + ".",
            hint="Leave those fields out to inherit the organisation's setting.",
        )


def _looser(base: int | None, override: int | None) -> bool:
    if override is None:
        return False
    return base is not None and override > base
