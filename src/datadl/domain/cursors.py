"""Opaque pagination cursors: signed JSON a client can hand back but not forge or alter."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from typing import TypeAlias

from datadl.domain.errors import InvalidCursor

CursorValue: TypeAlias = str | int | float | bool | None

#: Longest cursor accepted, so that a hostile client cannot make us hash or parse much.
MAX_CURSOR_LENGTH = 2048
#: Shortest key accepted; a shorter HMAC key would make cursors guessable.
MIN_KEY_BYTES = 16

# Half of SHA-256 is still far beyond guessing range and keeps URLs short.
_TAG_BYTES = 16
# Binds the tag to this use, so that a key shared with another signer cannot be used to
# pass that signer's output off as a cursor.
_CONTEXT = b"datadl/cursor/1\x00"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Decode unpadded base64url, or return None unless ``text`` is the canonical encoding."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None
    # The last character may carry unused low bits that the decoder ignores; demanding the
    # canonical form keeps every altered character from decoding to the same bytes.
    return raw if _b64encode(raw) == text else None


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"cursor key must be bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"cursor key must be at least {MIN_KEY_BYTES} bytes")


def _tag(key: bytes, body: str) -> bytes:
    return hmac.new(key, _CONTEXT + body.encode("ascii"), hashlib.sha256).digest()[:_TAG_BYTES]


def _is_value(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int)


def encode_cursor(values: Mapping[str, CursorValue], key: bytes) -> str:
    """Sign ``values`` into a URL-safe cursor string that only ``key`` can decode.

    Values are JSON scalars; floats must be finite. Raises ValueError or TypeError for
    values that cannot be represented, or a cursor that would exceed MAX_CURSOR_LENGTH.
    """
    _check_key(key)
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"cursor field names must be str, got {name!r}")
        if not _is_value(value):
            raise ValueError(f"cursor field {name!r} holds an unsupported value {value!r}")
    # ensure_ascii keeps lone surrogates representable, so any str round-trips.
    payload = json.dumps(dict(values), separators=(",", ":"), sort_keys=True, allow_nan=False)
    body = _b64encode(payload.encode("ascii"))
    cursor = f"{body}.{_b64encode(_tag(key, body))}"
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise ValueError(f"cursor would be {len(cursor)} characters; at most {MAX_CURSOR_LENGTH}")
    return cursor


def decode_cursor(cursor: str, key: bytes) -> dict[str, CursorValue]:
    """Verify a cursor made by :func:`encode_cursor` with ``key`` and return its values.

    Raises InvalidCursor for anything else: malformed, truncated, altered, too long, or
    signed with another key.
    """
    _check_key(key)
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor("The cursor is not one this server issued.")
    body, dot, tag_text = cursor.partition(".")
    tag = _b64decode(tag_text) if dot else None
    payload = _b64decode(body)
    if tag is None or payload is None or len(tag) != _TAG_BYTES:
        raise InvalidCursor("The cursor is malformed.")
    if not hmac.compare_digest(_tag(key, body), tag):
        raise InvalidCursor("The cursor was altered or was not issued by this server.")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InvalidCursor("The cursor payload does not parse.") from exc
    # Also refuses NaN and Infinity, which Python's json reads although JSON has neither.
    if not isinstance(data, dict) or not all(_is_value(value) for value in data.values()):
        raise InvalidCursor("The cursor payload has an unexpected shape.")
    values: dict[str, CursorValue] = data
    return values
