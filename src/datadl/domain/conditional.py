"""Conditional requests (RFC 9110 §13); datetimes must be timezone-aware and come back in UTC."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import attrs

__all__ = [
    "Outcome",
    "evaluate_preconditions",
    "format_http_date",
    "if_range_allows",
    "make_etag",
    "parse_http_date",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VARIANT = re.compile(r"[a-z0-9]+")
# etagc is %x21 / %x23-7E / obs-text: any visible byte but DQUOTE, so commas may occur inside.
_ENTITY_TAG = re.compile(r'(?P<weak>W/)?"(?P<opaque>[\x21\x23-\x7e\x80-\xff]*)"')
_OWS = " \t"

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = "[0-9]{2}:[0-9]{2}:[0-9]{2}"
# A four-digit year below 1000 is refused: the email parser would read "0094" as 1994.
_YEAR = "[1-9][0-9]{3}"
# The grammar is checked here because parsedate_to_datetime also accepts many non-HTTP forms.
_HTTP_DATE_FORMS = (
    re.compile(rf"{_DAY}, [0-9]{{2}} {_MONTH} {_YEAR} {_TIME} GMT"),
    re.compile(rf"{_LONG_DAY}, [0-9]{{2}}-{_MONTH}-[0-9]{{2}} {_TIME} GMT"),
    re.compile(rf"{_DAY} {_MONTH} (?:[0-9]{{2}}| [0-9]) {_TIME} {_YEAR}"),
)

_SAFE_METHODS = frozenset({"GET", "HEAD"})


class Outcome(enum.Enum):
    """What the preconditions of a request decide."""

    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    PRECONDITION_FAILED = "precondition_failed"


@attrs.frozen
class _EntityTag:
    weak: bool
    opaque: str

    def strong_match(self, other: _EntityTag) -> bool:
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: _EntityTag) -> bool:
        return self.opaque == other.opaque


def make_etag(sha256_hex: str, variant: str) -> str:
    """A strong ETag from a content sha256 (lowercase hex) and a format name such as ``csv``."""
    if _SHA256_HEX.fullmatch(sha256_hex) is None:
        raise ValueError("sha256_hex must be 64 lowercase hexadecimal characters")
    if _VARIANT.fullmatch(variant) is None:
        raise ValueError("variant must be lowercase ASCII letters and digits")
    return f'"{sha256_hex[:32]}-{variant}"'


def _parse_tag(value: str) -> _EntityTag | None:
    match = _ENTITY_TAG.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    return _EntityTag(weak=match["weak"] is not None, opaque=match["opaque"])


def _own_tag(etag: str) -> _EntityTag:
    tag = _parse_tag(etag)
    if tag is None:
        raise ValueError(f"not an entity-tag: {etag!r}")
    return tag


def _parse_tag_list(value: str) -> tuple[_EntityTag, ...]:
    """The entity-tags of a ``#entity-tag`` list; a malformed list yields none."""
    # Splitting on commas would cut tags apart, since an opaque-tag may contain commas.
    tags: list[_EntityTag] = []
    position, length = 0, len(value)
    while True:
        while position < length and value[position] in " \t,":
            position += 1
        if position == length:
            return tuple(tags)
        match = _ENTITY_TAG.match(value, position)
        if match is None:
            return ()
        tags.append(_EntityTag(weak=match["weak"] is not None, opaque=match["opaque"]))
        position = match.end()
        while position < length and value[position] in _OWS:
            position += 1
        if position < length and value[position] != ",":
            return ()


def _is_wildcard(value: str) -> bool:
    return value.strip(_OWS) == "*"


def _whole_seconds(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware")
    return dt.astimezone(UTC).replace(microsecond=0)


def format_http_date(dt: datetime) -> str:
    """``dt`` as an IMF-fixdate in GMT, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    utc = _whole_seconds(dt)
    # Names come from tables because strftime's %a and %b follow the process locale.
    return (
        f"{_DAY_NAMES[utc.weekday()]}, {utc.day:02d} {_MONTH_NAMES[utc.month - 1]} "
        f"{utc.year:04d} {utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT"
    )


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime form) as an aware UTC datetime, or None."""
    text = value.strip(_OWS)
    if not any(form.fullmatch(text) for form in _HTTP_DATE_FORMS):
        return None
    # RFC 850 two-digit years follow the email parser (69-99 → 19xx, else 20xx); the RFC's
    # sliding fifty-year window would make this function depend on the clock.
    try:
        parsed = parsedate_to_datetime(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def if_range_allows(if_range: str | None, *, etag: str, last_modified: datetime) -> bool:
    """Whether the Range header may be honoured given the If-Range header (RFC 9110 §13.1.5).

    An entity-tag must match ``etag`` by strong comparison, so a weak tag never does; an
    HTTP-date must equal ``last_modified`` to the second. Anything unparseable fails.
    """
    own = _own_tag(etag)
    modified = _whole_seconds(last_modified)
    if if_range is None:
        return True
    text = if_range.strip(_OWS)
    if text.startswith(('"', 'W/"')):
        tag = _parse_tag(text)
        return tag is not None and tag.strong_match(own)
    return parse_http_date(text) == modified


def evaluate_preconditions(
    *,
    method: str,
    etag: str,
    last_modified: datetime,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
) -> Outcome:
    """Apply the conditional headers in the order of RFC 9110 §13.2.2.

    ``method`` is compared case-sensitively, as HTTP methods are. A malformed entity-tag
    list matches nothing; an invalid date makes its header ignored.
    """
    own = _own_tag(etag)
    modified = _whole_seconds(last_modified)

    if if_match is not None:
        if not (
            _is_wildcard(if_match) or any(t.strong_match(own) for t in _parse_tag_list(if_match))
        ):
            return Outcome.PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        limit = parse_http_date(if_unmodified_since)
        if limit is not None and modified > limit:
            return Outcome.PRECONDITION_FAILED

    safe = method in _SAFE_METHODS
    if if_none_match is not None:
        if _is_wildcard(if_none_match) or any(
            t.weak_match(own) for t in _parse_tag_list(if_none_match)
        ):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    elif safe and if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        if since is not None and modified <= since:
            return Outcome.NOT_MODIFIED

    return Outcome.PROCEED
