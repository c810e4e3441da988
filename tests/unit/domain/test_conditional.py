"""Unit tests for ETags, HTTP-dates and precondition evaluation in datadl.domain.conditional."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.conditional import (
    Outcome,
    evaluate_preconditions,
    format_http_date,
    if_range_allows,
    make_etag,
    parse_http_date,
)

SHA = hashlib.sha256(b"datadl").hexdigest()
ETAG = make_etag(SHA, "csv")
OPAQUE = ETAG[1:-1]
OTHER = make_etag(hashlib.sha256(b"other").hexdigest(), "csv")
# Microseconds on purpose: HTTP-dates have whole seconds, so comparisons must truncate.
MODIFIED = datetime(2024, 3, 5, 14, 7, 9, 750_000, tzinfo=UTC)
AT = "Tue, 05 Mar 2024 14:07:09 GMT"
BEFORE = "Tue, 05 Mar 2024 14:07:08 GMT"
AFTER = "Tue, 05 Mar 2024 14:07:10 GMT"

P = Outcome.PROCEED
NM = Outcome.NOT_MODIFIED
PF = Outcome.PRECONDITION_FAILED


def evaluate(method: str = "GET", *, etag: str = ETAG, **headers: str) -> Outcome:
    """evaluate_preconditions on the fixture representation with the given headers."""
    return evaluate_preconditions(method=method, etag=etag, last_modified=MODIFIED, **headers)


# --- make_etag -----------------------------------------------------------------------------


def test_make_etag_shape() -> None:
    """The ETag is the quoted first 32 hex characters of the digest, a dash and the variant."""
    digest = "0123456789abcdef" * 2 + "fedcba9876543210" * 2
    assert make_etag(digest, "original") == '"0123456789abcdef0123456789abcdef-original"'


def test_make_etag_differs_by_variant() -> None:
    """The same content in two formats gets two different ETags."""
    assert make_etag(SHA, "csv") != make_etag(SHA, "parquet")


@pytest.mark.parametrize(
    "sha",
    [
        SHA.upper(),
        SHA[:63],
        SHA + "0",
        "g" * 64,
        "",
        " " + SHA[1:],
        "\u0661" * 64,
    ],
)
def test_make_etag_rejects_bad_digest(sha: str) -> None:
    """Anything but 64 lowercase ASCII hex characters is refused as a digest."""
    with pytest.raises(ValueError, match="sha256_hex"):
        make_etag(sha, "csv")


@pytest.mark.parametrize(
    "variant", ["", "CSV", "csv-gz", "csv.gz", 'c"v', "csv ", "csv\n", "c\u0661"]
)
def test_make_etag_rejects_bad_variant(variant: str) -> None:
    """A variant must be lowercase ASCII letters and digits only."""
    with pytest.raises(ValueError, match="variant"):
        make_etag(SHA, variant)


@given(digest=st.binary(min_size=32, max_size=32), bit=st.integers(min_value=0, max_value=127))
def test_single_bit_flip_changes_etag(digest: bytes, bit: int) -> None:
    """Flipping any bit in the first 128 bits of the digest changes the ETag."""
    flipped = bytearray(digest)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert make_etag(digest.hex(), "csv") != make_etag(bytes(flipped).hex(), "csv")


_ETAGC = "".join(chr(c) for c in [0x21, *range(0x23, 0x7F)])


@given(
    digest=st.binary(min_size=32, max_size=32),
    data=st.data(),
)
def test_changed_character_never_matches(digest: bytes, data: st.DataObject) -> None:
    """An entity-tag differing from ours in one opaque character matches under no comparison."""
    etag = make_etag(digest.hex(), "csv")
    index = data.draw(st.integers(min_value=1, max_value=len(etag) - 2))
    char = data.draw(st.sampled_from(_ETAGC).filter(lambda c: c != etag[index]))
    changed = etag[:index] + char + etag[index + 1 :]
    assert evaluate(etag=etag, if_match=changed) is PF
    assert evaluate(etag=etag, if_none_match=changed) is P
    assert evaluate(etag=etag, if_none_match="W/" + changed) is P
    assert not if_range_allows(changed, etag=etag, last_modified=MODIFIED)


@given(digest=st.binary(min_size=32, max_size=32))
def test_own_etag_always_matches(digest: bytes) -> None:
    """Our own ETag sent back verbatim matches If-Match, If-None-Match and If-Range."""
    etag = make_etag(digest.hex(), "json")
    assert evaluate(etag=etag, if_match=etag) is P
    assert evaluate(etag=etag, if_none_match=etag) is NM
    assert if_range_allows(etag, etag=etag, last_modified=MODIFIED)


# --- HTTP-dates ------------------------------------------------------------------------------

RFC_MOMENT = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        " Sun, 06 Nov 1994 08:49:37 GMT\t",
    ],
)
def test_parse_three_forms(value: str) -> None:
    """IMF-fixdate and the obsolete RFC 850 and asctime forms all parse to the same instant."""
    parsed = parse_http_date(value)
    assert parsed == RFC_MOMENT
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


def test_rfc850_two_digit_years() -> None:
    """RFC 850 years 69-99 are 19xx and 00-68 are 20xx."""
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_http_date("Friday, 01-Jan-38 00:00:00 GMT") == datetime(2038, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "1994-11-06T08:49:37Z",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37 -0000",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 0094 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 23:59:60 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\n",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 199\u0664 08:49:37 GMT",
        "Sun, 06 Nov 1994 \u06608:49:37 GMT",
        "Sun Nov  6 08:49:\u06637 1994",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",
    ],
)
def test_parse_rejects_non_http_dates(value: str) -> None:
    """Strings outside the three HTTP-date forms, or naming impossible times, give None."""
    assert parse_http_date(value) is None


def test_format_rfc_example() -> None:
    """format_http_date renders the RFC's example instant as IMF-fixdate."""
    assert format_http_date(RFC_MOMENT) == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_format_converts_to_gmt_and_drops_microseconds() -> None:
    """A non-UTC aware datetime is shown in GMT, without its fraction of a second."""
    paris = timezone(timedelta(hours=1))
    assert format_http_date(datetime(2024, 1, 1, 0, 30, 5, 999_999, tzinfo=paris)) == (
        "Sun, 31 Dec 2023 23:30:05 GMT"
    )


def test_format_rejects_naive() -> None:
    """A naive datetime is refused rather than guessed to be UTC."""
    with pytest.raises(ValueError, match="aware"):
        format_http_date(datetime(2024, 1, 1))


@given(
    moment=st.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.just(UTC),
    )
)
def test_format_parse_round_trip(moment: datetime) -> None:
    """Parsing a formatted datetime gives it back to the whole second."""
    assert parse_http_date(format_http_date(moment)) == moment.replace(microsecond=0)


# --- If-Range --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG} ", True),
        (f"W/{ETAG}", False),
        (OTHER, False),
        (f'"{OPAQUE}x"', False),
        (f"{ETAG}, {ETAG}", False),
        (OPAQUE, False),
        ('"', False),
        (AT, True),
        ("Tuesday, 05-Mar-24 14:07:09 GMT", True),
        ("Tue Mar  5 14:07:09 2024", True),
        (BEFORE, False),
        (AFTER, False),
        ("not a date", False),
        ("", False),
    ],
)
def test_if_range(if_range: str | None, allowed: bool) -> None:
    """If-Range allows ranges only for a strongly matching ETag or the Last-Modified second."""
    assert if_range_allows(if_range, etag=ETAG, last_modified=MODIFIED) is allowed


def test_if_range_with_weak_own_etag_never_matches() -> None:
    """When our own validator is weak, even an identical If-Range tag fails strong comparison."""
    weak = f"W/{ETAG}"
    assert not if_range_allows(weak, etag=weak, last_modified=MODIFIED)
    assert not if_range_allows(ETAG, etag=weak, last_modified=MODIFIED)


def test_if_range_compares_instants_not_zones() -> None:
    """A Last-Modified given in another zone matches the same instant written in GMT."""
    local = MODIFIED.astimezone(timezone(timedelta(hours=-5)))
    assert if_range_allows(AT, etag=ETAG, last_modified=local)


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize("etag", ["", OPAQUE, f'"{OPAQUE}', '"a b"', '"a"b"', f"w/{ETAG}"])
def test_rejects_malformed_own_etag(etag: str) -> None:
    """Our own ETag must itself be a valid entity-tag."""
    with pytest.raises(ValueError, match="entity-tag"):
        evaluate_preconditions(method="GET", etag=etag, last_modified=MODIFIED)
    with pytest.raises(ValueError, match="entity-tag"):
        if_range_allows(None, etag=etag, last_modified=MODIFIED)


def test_rejects_naive_last_modified() -> None:
    """A naive Last-Modified is refused rather than guessed to be UTC."""
    naive = datetime(2024, 1, 1)
    with pytest.raises(ValueError, match="aware"):
        evaluate_preconditions(method="GET", etag=ETAG, last_modified=naive)
    with pytest.raises(ValueError, match="aware"):
        if_range_allows(None, etag=ETAG, last_modified=naive)


# --- entity-tag lists ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (ETAG, True),
        (f'"a", {ETAG}', True),
        (f'"a",{ETAG},"b"', True),
        (f' , ,"a" ,\t{ETAG} , ', True),
        (f'"a,{OPAQUE}"', False),
        (f'"{OPAQUE},"', False),
        (f'"x", "y,{OPAQUE}", "z"', False),
        (f'"a" {ETAG}', False),
        (f"{ETAG}junk", False),
        (f'"a", {ETAG}, junk', False),
        (f"*, {ETAG}", False),
        (f"w/{ETAG}", False),
        ("", False),
        ('"a", "b"', False),
    ],
)
def test_if_none_match_list_parsing(header: str, matches: bool) -> None:
    """If-None-Match lists are split on commas outside quotes, and a malformed list matches none."""
    assert evaluate(if_none_match=header) is (NM if matches else P)


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (ETAG, True),
        (f'"a", {ETAG}', True),
        (f'"a,{OPAQUE}"', False),
        (f'"{OPAQUE},", "b"', False),
        (f"{ETAG} junk", False),
        (f'"a", {ETAG}, junk', False),
        ("", False),
    ],
)
def test_if_match_list_parsing(header: str, matches: bool) -> None:
    """If-Match lists are split on commas outside quotes, and a malformed list matches none."""
    assert evaluate(if_match=header) is (P if matches else PF)


# --- precondition evaluation order (RFC 9110 §13.2.2) -----------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        # no preconditions
        ("GET", {}, P),
        ("PUT", {}, P),
        # step 1: If-Match, strong comparison
        ("PUT", {"if_match": ETAG}, P),
        ("PUT", {"if_match": "*"}, P),
        ("PUT", {"if_match": " * "}, P),
        ("PUT", {"if_match": OTHER}, PF),
        ("GET", {"if_match": OTHER}, PF),
        ("PUT", {"if_match": f"W/{ETAG}"}, PF),
        # step 1 wins over step 2: If-Unmodified-Since is ignored when If-Match is present
        ("PUT", {"if_match": ETAG, "if_unmodified_since": BEFORE}, P),
        ("PUT", {"if_match": OTHER, "if_unmodified_since": AFTER}, PF),
        # step 2: If-Unmodified-Since
        ("PUT", {"if_unmodified_since": BEFORE}, PF),
        ("PUT", {"if_unmodified_since": AT}, P),
        ("PUT", {"if_unmodified_since": AFTER}, P),
        ("PUT", {"if_unmodified_since": "garbage"}, P),
        ("GET", {"if_unmodified_since": BEFORE}, PF),
        # steps 1-2 come before step 3
        ("GET", {"if_match": OTHER, "if_none_match": ETAG}, PF),
        ("GET", {"if_unmodified_since": BEFORE, "if_none_match": ETAG}, PF),
        # step 3: If-None-Match, weak comparison
        ("GET", {"if_none_match": ETAG}, NM),
        ("HEAD", {"if_none_match": ETAG}, NM),
        ("GET", {"if_none_match": f"W/{ETAG}"}, NM),
        ("GET", {"if_none_match": "*"}, NM),
        ("GET", {"if_none_match": OTHER}, P),
        ("PUT", {"if_none_match": ETAG}, PF),
        ("POST", {"if_none_match": "*"}, PF),
        ("DELETE", {"if_none_match": f"W/{ETAG}"}, PF),
        ("PUT", {"if_none_match": OTHER}, P),
        ("get", {"if_none_match": ETAG}, PF),
        # steps 1 and 3 together
        ("GET", {"if_match": ETAG, "if_none_match": ETAG}, NM),
        ("PUT", {"if_match": ETAG, "if_none_match": ETAG}, PF),
        ("GET", {"if_match": ETAG, "if_none_match": OTHER}, P),
        # step 3 wins over step 4: If-Modified-Since is ignored when If-None-Match is present
        ("GET", {"if_none_match": OTHER, "if_modified_since": AFTER}, P),
        ("GET", {"if_none_match": ETAG, "if_modified_since": BEFORE}, NM),
        ("GET", {"if_none_match": "", "if_modified_since": AFTER}, P),
        # step 4: If-Modified-Since, GET and HEAD only
        ("GET", {"if_modified_since": AT}, NM),
        ("HEAD", {"if_modified_since": AFTER}, NM),
        ("GET", {"if_modified_since": BEFORE}, P),
        ("GET", {"if_modified_since": "garbage"}, P),
        ("GET", {"if_modified_since": "Tuesday, 05-Mar-24 14:07:09 GMT"}, NM),
        ("PUT", {"if_modified_since": AFTER}, P),
        ("POST", {"if_modified_since": AT}, P),
        # step 2 before step 4
        ("GET", {"if_unmodified_since": BEFORE, "if_modified_since": AFTER}, PF),
        ("GET", {"if_unmodified_since": AFTER, "if_modified_since": AFTER}, NM),
        # all four
        (
            "GET",
            {
                "if_match": ETAG,
                "if_unmodified_since": BEFORE,
                "if_none_match": OTHER,
                "if_modified_since": AFTER,
            },
            P,
        ),
    ],
)
def test_evaluation_order(method: str, headers: dict[str, str], expected: Outcome) -> None:
    """Each combination of conditional headers yields the outcome RFC 9110 §13.2.2 prescribes."""
    assert evaluate(method, **headers) is expected


def test_dates_compare_against_whole_seconds() -> None:
    """Last-Modified is truncated to the second before comparing with an HTTP-date."""
    # MODIFIED is 14:07:09.75; without truncation AT would look older than it.
    assert evaluate(if_modified_since=AT) is NM
    assert evaluate("PUT", if_unmodified_since=AT) is P
