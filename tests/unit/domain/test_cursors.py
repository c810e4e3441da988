"""Tests for signed, opaque pagination cursors."""

from __future__ import annotations

import base64
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.cursors import (
    MAX_CURSOR_LENGTH,
    CursorValue,
    _tag,
    decode_cursor,
    encode_cursor,
)
from datadl.domain.errors import BadRequest, InvalidCursor

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
SAMPLE: dict[str, CursorValue] = {
    "after": "2024-05-01T12:00:00Z",
    "id": 4182,
    "score": 0.75,
    "desc": True,
    "tag": None,
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


def _fits(values: dict[str, CursorValue]) -> bool:
    """Whether the values make a cursor within MAX_CURSOR_LENGTH (longer ones are refused,
    as test_overlong_cursor_is_rejected_even_if_correctly_signed shows); long unicode
    text can exceed it."""
    try:
        encode_cursor(values, KEY)
    except ValueError:
        return False
    return True


value_maps = st.dictionaries(st.text(max_size=20), scalars, max_size=8).filter(_fits)


def b64(raw: bytes) -> str:
    """Unpadded base64url, as cursors use."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Inverse of b64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def assert_rejected(cursor: str, key: bytes = KEY) -> None:
    """The cursor raises InvalidCursor and nothing else."""
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, key)


@given(value_maps)
def test_round_trip(values: dict[str, CursorValue]) -> None:
    """Decoding an encoded cursor gives back exactly the values, types included."""
    decoded = decode_cursor(encode_cursor(values, KEY), KEY)
    assert decoded == values
    assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in values.items()}
    for name, value in values.items():
        if isinstance(value, float):
            assert math.copysign(1.0, decoded[name]) == math.copysign(1.0, value)  # type: ignore[arg-type]


@given(value_maps)
def test_cursor_is_url_safe(values: dict[str, CursorValue]) -> None:
    """A cursor is two unpadded base64url parts and a 16-byte tag, safe in any URL."""
    cursor = encode_cursor(values, KEY)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}", cursor)
    assert len(unb64(cursor.split(".")[1])) == 16


def test_encoding_is_deterministic_and_order_free() -> None:
    """The same values give the same cursor whatever order the mapping lists them in."""
    reordered = dict(reversed(list(SAMPLE.items())))
    assert encode_cursor(SAMPLE, KEY) == encode_cursor(reordered, KEY)


def test_payload_is_compact_json() -> None:
    """The payload is JSON without spaces, so cursors stay short."""
    cursor = encode_cursor({"id": 5, "after": "x"}, KEY)
    assert unb64(cursor.split(".")[0]) == b'{"after":"x","id":5}'


def test_every_single_character_change_is_rejected() -> None:
    """Replacing any one character with any other plausible one makes the cursor invalid."""
    cursor = encode_cursor(SAMPLE, KEY)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é"
    for position, original in enumerate(cursor):
        for replacement in alphabet:
            if replacement != original:
                assert_rejected(cursor[:position] + replacement + cursor[position + 1 :])


def test_every_bit_flip_of_the_decoded_bytes_is_rejected() -> None:
    """Flipping any bit of the payload or of the tag, re-encoded cleanly, is rejected."""
    body, tag = encode_cursor(SAMPLE, KEY).split(".")
    for part in (0, 1):
        raw = unb64((body, tag)[part])
        for bit in range(len(raw) * 8):
            flipped = bytearray(raw)
            flipped[bit // 8] ^= 1 << (bit % 8)
            parts = [body, tag]
            parts[part] = b64(bytes(flipped))
            assert_rejected(".".join(parts))


def test_non_canonical_base64_is_rejected() -> None:
    """A tag whose unused trailing bits differ decodes to the same bytes but is still refused."""
    body, tag = encode_cursor(SAMPLE, KEY).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The 22nd character holds 2 data bits and 4 spare ones; the next index sets a spare bit.
    sibling = alphabet[alphabet.index(tag[-1]) ^ 1]
    assert unb64(tag[:-1] + sibling) == unb64(tag)
    assert_rejected(f"{body}.{tag[:-1]}{sibling}")


@pytest.mark.parametrize("cut", [1, 5, 23])
def test_truncated_cursor_is_rejected(cut: int) -> None:
    """Dropping characters from either end makes the cursor invalid."""
    cursor = encode_cursor(SAMPLE, KEY)
    assert_rejected(cursor[:-cut])
    assert_rejected(cursor[cut:])


def test_wrong_key_is_rejected() -> None:
    """A cursor made with one key does not decode with another."""
    assert_rejected(encode_cursor(SAMPLE, OTHER_KEY), KEY)


def test_signed_junk_payloads_are_rejected() -> None:
    """Even correctly signed, a payload that is not a flat JSON object is refused."""
    control = b64(b'{"a":1}')
    assert decode_cursor(f"{control}.{b64(_tag(KEY, control))}", KEY) == {"a": 1}
    for payload in [b"[1,2]", b'{"a":[1]}', b'{"a":{"b":1}}', b'{"a":NaN}', b"\xff", b"{"]:
        body = b64(payload)
        assert_rejected(f"{body}.{b64(_tag(KEY, body))}")


def test_overlong_cursor_is_rejected_even_if_correctly_signed() -> None:
    """A cursor beyond the length cap is refused even when its tag is right."""
    body = b64(b'{"blob":"' + b"x" * MAX_CURSOR_LENGTH + b'"}')
    assert_rejected(f"{body}.{b64(_tag(KEY, body))}")
    with pytest.raises(ValueError, match="at most"):
        encode_cursor({"blob": "x" * MAX_CURSOR_LENGTH}, KEY)


@given(st.text(max_size=3000))
def test_junk_strings_raise_invalid_cursor_only(junk: str) -> None:
    """Arbitrary text is rejected with InvalidCursor, never another exception type."""
    assert_rejected(junk)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."))
def test_junk_in_the_cursor_alphabet_raises_invalid_cursor_only(junk: str) -> None:
    """Text that looks like a cursor is rejected with InvalidCursor, never anything else."""
    assert_rejected(junk)


def test_invalid_cursor_is_a_bad_request() -> None:
    """InvalidCursor maps to the bad_request code that clients already handle."""
    with pytest.raises(BadRequest) as caught:
        decode_cursor("nonsense", KEY)
    assert caught.value.code == "bad_request"


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"x": math.nan}, ValueError),
        ({"x": math.inf}, ValueError),
        ({"x": [1, 2]}, ValueError),
        ({"x": b"bytes"}, ValueError),
        ({1: "x"}, TypeError),
    ],
)
def test_encode_rejects_values_json_cannot_carry(values: object, error: type[Exception]) -> None:
    """Non-finite floats, containers, bytes and non-str keys are refused at encode time."""
    with pytest.raises(error):
        encode_cursor(values, KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", b"short", "a str key of more than sixteen chars"])
def test_short_or_mistyped_keys_are_refused(key: object) -> None:
    """A key shorter than 16 bytes, or not bytes, is a programming error both ways."""
    with pytest.raises((ValueError, TypeError)):
        encode_cursor(SAMPLE, key)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError)):
        decode_cursor("abc.def", key)  # type: ignore[arg-type]
