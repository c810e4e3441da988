"""Tests for signed, expiring download tokens and their signing keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.errors import DatadlError, TokenExpired, TokenInvalid
from datadl.domain.tokens import (
    MAX_TOKEN_LENGTH,
    SigningKey,
    TokenClaims,
    check_expiry,
    newest_key,
    read_token,
    sign_token,
)

OLD = SigningKey("k2023", b"o" * 32)
NEW = SigningKey("k2024", b"n" * 32)
RING = {OLD.key_id: OLD, NEW.key_id: NEW}
ISSUED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CLAIMS = TokenClaims(
    token_id="tok_7Qx2",
    dataset_id="ds_census",
    version=3,
    format="parquet",
    principal_id="usr_41",
    issued_at=ISSUED,
    expires_at=ISSUED + timedelta(minutes=15),
    max_uses=5,
    key_id=NEW.key_id,
)

key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
texts = st.text(min_size=1, max_size=12)


@st.composite
def claims_and_key(draw: st.DrawFn) -> tuple[TokenClaims, SigningKey]:
    """Arbitrary valid claims and a key whose id they carry."""
    key = SigningKey(draw(key_ids), draw(st.binary(min_size=32, max_size=64)))
    issued = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=draw(st.integers(min_value=-(10**9), max_value=10**10))
    )
    claims = TokenClaims(
        token_id=draw(texts),
        dataset_id=draw(texts),
        version=draw(st.integers(min_value=0, max_value=2**63)),
        format=draw(st.sampled_from(["csv", "parquet", "jsonl"]) | texts),
        principal_id=draw(st.none() | texts),
        issued_at=issued,
        expires_at=issued + timedelta(seconds=draw(st.integers(min_value=1, max_value=10**8))),
        max_uses=draw(st.none() | st.integers(min_value=1, max_value=10**6)),
        key_id=key.key_id,
    )
    return claims, key


def b64(raw: bytes) -> str:
    """Unpadded base64url, as tokens use."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Inverse of b64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(payload: bytes, key: SigningKey) -> str:
    """A token with this exact payload and a correct MAC, built from the documented layout."""
    signed = "dt1." + b64(payload)
    return signed + "." + b64(hmac.new(key.secret, signed.encode(), hashlib.sha256).digest())


def assert_invalid(token: str, keys: dict[str, SigningKey] = RING) -> None:
    """read_token raises TokenInvalid, and no other exception, for this token."""
    with pytest.raises(TokenInvalid):
        read_token(token, keys)


@given(claims_and_key())
def test_round_trip(case: tuple[TokenClaims, SigningKey]) -> None:
    """Reading a signed token gives back exactly the claims that were signed."""
    claims, key = case
    token = sign_token(claims, key)
    assert read_token(token, {key.key_id: key}) == claims


def test_token_layout_is_compact_and_url_safe() -> None:
    """A token is dt1, a base64url JSON array and a full HMAC-SHA256, with no padding."""
    token = sign_token(CLAIMS, NEW)
    assert re.fullmatch(r"dt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token)
    assert len(token) < 200
    prefix, body, mac = token.split(".")
    assert isinstance(json.loads(unb64(body)), list)
    expected = hmac.new(NEW.secret, f"{prefix}.{body}".encode(), hashlib.sha256).digest()
    assert unb64(mac) == expected


def test_every_bit_flip_of_the_token_string_is_rejected() -> None:
    """Flipping any one bit of any character of the token makes read_token refuse it."""
    token = sign_token(CLAIMS, NEW)
    for position, char in enumerate(token):
        for bit in range(8):
            altered = token[:position] + chr(ord(char) ^ (1 << bit)) + token[position + 1 :]
            assert_invalid(altered)


def test_every_bit_flip_of_the_decoded_payload_or_mac_is_rejected() -> None:
    """Flipping any bit of the payload or MAC bytes, re-encoded cleanly, is refused."""
    _, body, mac = sign_token(CLAIMS, NEW).split(".")
    for part in (1, 2):
        raw = unb64((body, mac)[part - 1])
        for bit in range(len(raw) * 8):
            flipped = bytearray(raw)
            flipped[bit // 8] ^= 1 << (bit % 8)
            parts = ["dt1", body, mac]
            parts[part] = b64(bytes(flipped))
            assert_invalid(".".join(parts))


def test_non_canonical_mac_encoding_is_rejected() -> None:
    """A MAC whose unused trailing bits differ decodes to the same bytes but is refused."""
    token = sign_token(CLAIMS, NEW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The 43rd character holds 4 data bits and 2 spare ones; the next index sets a spare bit.
    sibling = alphabet[alphabet.index(token[-1]) ^ 1]
    assert unb64(token.split(".")[2][:-1] + sibling) == unb64(token.split(".")[2])
    assert_invalid(token[:-1] + sibling)


def test_old_key_verifies_while_it_is_in_the_ring() -> None:
    """A token signed before a rotation still reads while its key is listed, and not after."""
    old_claims = attrs.evolve(CLAIMS, key_id=OLD.key_id)
    token = sign_token(old_claims, OLD)
    assert read_token(token, RING) == old_claims
    assert_invalid(token, {NEW.key_id: NEW})


def test_key_id_swapped_in_the_payload_is_rejected() -> None:
    """Relabelling a token as signed by another trusted key breaks its MAC."""
    prefix, body, mac = sign_token(attrs.evolve(CLAIMS, key_id=OLD.key_id), OLD).split(".")
    fields = json.loads(unb64(body))
    fields[0] = NEW.key_id
    relabelled = b64(json.dumps(fields, separators=(",", ":")).encode())
    assert_invalid(f"{prefix}.{relabelled}.{mac}")


def test_same_id_different_secret_is_rejected() -> None:
    """A key that shares the id but not the secret does not verify the token."""
    token = sign_token(CLAIMS, NEW)
    impostor = SigningKey(NEW.key_id, b"x" * 32)
    assert_invalid(token, {NEW.key_id: impostor})


def test_ring_entry_under_the_wrong_id_is_not_used() -> None:
    """A key listed under an id other than its own is not trusted for that id."""
    token = sign_token(CLAIMS, NEW)
    assert_invalid(token, {NEW.key_id: OLD})
    assert_invalid(token, {NEW.key_id: SigningKey("mislabelled", NEW.secret)})


def test_signing_with_a_key_the_claims_do_not_name_fails() -> None:
    """Claims naming one key cannot be signed with another."""
    with pytest.raises(ValueError, match="signed with"):
        sign_token(CLAIMS, OLD)


def test_overlong_tokens_are_neither_issued_nor_read() -> None:
    """The length cap applies on both sides: too long to sign, and refused when read."""
    with pytest.raises(ValueError, match="at most"):
        sign_token(attrs.evolve(CLAIMS, token_id="t" * MAX_TOKEN_LENGTH), NEW)
    long_claims = attrs.evolve(CLAIMS, token_id="t" * MAX_TOKEN_LENGTH)
    fields = [NEW.key_id, long_claims.token_id, "d", 3, "csv", None, 1714564800, 1714565700, None]
    assert_invalid(forge(json.dumps(fields).encode(), NEW))


def test_forged_helper_matches_the_real_signer() -> None:
    """The test helper builds byte-identical tokens, so the cases below reach the parser."""
    token = sign_token(CLAIMS, NEW)
    assert forge(unb64(token.split(".")[1]), NEW) == token


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"k":"k2024"}',
        b'["k2024"]',
        b'["k2024","t","d",3,"csv",null,1714564800,1714565700]',
        b'["k2024","t","d",true,"csv",null,1714564800,1714565700,null]',
        b'["k2024","t","d",3.0,"csv",null,1714564800,1714565700,null]',
        b'["k2024","t","d",3,"csv",7,1714564800,1714565700,null]',
        b'["k2024","t","d",3,"csv",null,1714564800.0,1714565700,null]',
        b'["k2024","t","d",3,"csv",null,"1714564800",1714565700,null]',
        b'["k2024","t","d",3,"csv",null,1714564800,1714565700,2.0]',
        b'["k2024","t","d",3,"csv",null,1714564800,1714564800,null]',
        b'["k2024","t","d",3,"csv",null,1714564800,99999999999999999999,null]',
        b'["k2024","t","d",3,"csv",null,1714564800,1714565700,0]',
        b'["k2024","","d",3,"csv",null,1714564800,1714565700,null]',
        b'["k2024","t","d",-1,"csv",null,1714564800,1714565700,null]',
        b'[["k2024"],"t","d",3,"csv",null,1714564800,1714565700,null]',
        b'["k2024","t","d",3,"csv",null,1714564800,1714565700,null,"extra"]',
        b"[" * 300 + b"]" * 300,
    ],
)
def test_correctly_signed_bad_payloads_are_rejected(payload: bytes) -> None:
    """A payload with a valid MAC but the wrong shape or impossible values is still refused."""
    assert_invalid(forge(payload, NEW))


def test_correctly_signed_minimal_payload_is_accepted() -> None:
    """The positive control for the case above: a hand-built valid payload reads back."""
    payload = b'["k2024","t","d",3,"csv",null,1714564800,1714565700,null]'
    claims = read_token(forge(payload, NEW), RING)
    assert claims.expires_at - claims.issued_at == timedelta(minutes=15)
    assert claims.principal_id is None
    assert claims.max_uses is None


@given(st.text(max_size=1200))
def test_junk_raises_token_invalid_only(junk: str) -> None:
    """Arbitrary text is refused with TokenInvalid, never another exception type."""
    assert_invalid(junk)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."))
def test_plausible_junk_raises_token_invalid_only(junk: str) -> None:
    """Text in the token alphabet behind a valid prefix is refused with TokenInvalid only."""
    assert_invalid("dt1." + junk)


def test_read_token_does_not_check_expiry() -> None:
    """read_token accepts an expired token; expiry is check_expiry's job."""
    token = sign_token(CLAIMS, NEW)
    assert read_token(token, RING) == CLAIMS
    with pytest.raises(TokenExpired):
        check_expiry(read_token(token, RING), CLAIMS.expires_at + timedelta(days=365))


def test_expiry_boundary() -> None:
    """A token is valid up to the second before expires_at, and expired from it on."""
    check_expiry(CLAIMS, CLAIMS.expires_at - timedelta(microseconds=1))
    check_expiry(CLAIMS, CLAIMS.issued_at)
    for now in (CLAIMS.expires_at, CLAIMS.expires_at + timedelta(seconds=1)):
        with pytest.raises(TokenExpired):
            check_expiry(CLAIMS, now)


def test_expiry_compares_instants_across_time_zones() -> None:
    """A clock in another zone is compared by instant, not by wall time."""
    plus_two = timezone(timedelta(hours=2))
    with pytest.raises(TokenExpired):
        check_expiry(CLAIMS, CLAIMS.expires_at.astimezone(plus_two))
    check_expiry(CLAIMS, (CLAIMS.expires_at - timedelta(seconds=1)).astimezone(plus_two))


def test_expiry_needs_an_aware_clock() -> None:
    """A naive datetime is a programming error, not an expired token."""
    with pytest.raises(ValueError, match="aware"):
        check_expiry(CLAIMS, datetime(2024, 5, 1, 12, 0))


def test_newest_key_is_the_last_one() -> None:
    """Rings list keys oldest first, so the last one signs new tokens."""
    assert newest_key([OLD, NEW]) is NEW
    assert newest_key((NEW,)) is NEW
    with pytest.raises(ValueError, match="empty"):
        newest_key([])


def test_signing_key_repr_hides_the_secret() -> None:
    """Neither repr nor str of a key shows its secret."""
    key = SigningKey("k1", b"S3cr3t-value-that-must-not-leak!")
    for text in (repr(key), str(key), repr([key])):
        assert "S3cr3t" not in text
        assert "k1" in text


@pytest.mark.parametrize(
    ("key_id", "secret"),
    [
        ("", b"s" * 32),
        ("k" * 33, b"s" * 32),
        ("has space", b"s" * 32),
        ("dot.ted", b"s" * 32),
        ("k1\n", b"s" * 32),
        ("ключ", b"s" * 32),
        ("k1", b"s" * 31),
        ("k1", "s" * 32),
    ],
)
def test_signing_key_validation(key_id: str, secret: bytes) -> None:
    """Key ids are 1-32 URL-safe characters and secrets at least 32 bytes."""
    with pytest.raises((ValueError, TypeError)):
        SigningKey(key_id, secret)


@pytest.mark.parametrize(
    "change",
    [
        {"token_id": ""},
        {"dataset_id": ""},
        {"format": ""},
        {"principal_id": ""},
        {"version": -1},
        {"version": True},
        {"max_uses": 0},
        {"key_id": "bad id"},
        {"issued_at": datetime(2024, 5, 1, 12, 0)},
        {"issued_at": datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))},
        {"issued_at": ISSUED + timedelta(milliseconds=500)},
        {"expires_at": ISSUED},
        {"expires_at": ISSUED - timedelta(seconds=1)},
    ],
)
def test_token_claims_validation(change: dict[str, Any]) -> None:
    """Claims need non-empty ids, sane counts, and a later expiry in whole UTC seconds."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case trips a different check
        attrs.evolve(CLAIMS, **change)


def test_token_errors_have_stable_codes() -> None:
    """Both token errors are DatadlErrors with their own codes and a hint to get a new one."""
    for error, code in ((TokenInvalid, "token_invalid"), (TokenExpired, "token_expired")):
        assert issubclass(error, DatadlError)
        assert error.code == code
        assert "new download token" in error().hint
