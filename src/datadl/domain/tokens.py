"""Signed, expiring download tokens: compact strings that let their holder fetch one file."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from datadl.domain.errors import TokenExpired, TokenInvalid

#: Format marker and first part of every token; a new layout gets a new marker.
TOKEN_PREFIX = "dt1"  # noqa: S105 - a format marker, not a credential
#: Longest token accepted, so that a hostile client cannot make us decode or hash much.
MAX_TOKEN_LENGTH = 1024
#: Shortest secret accepted: HMAC-SHA256 gains nothing from more, and loses from less.
MIN_SECRET_BYTES = 32

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAC_BYTES = hashlib.sha256().digest_size
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def _check_key_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise ValueError(f"{attribute.name} must match [A-Za-z0-9_-]{{1,32}}, got {value!r}")


def _check_secret(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
    if len(value) < MIN_SECRET_BYTES:
        # The length is safe to report; the secret itself never appears in a message.
        raise ValueError(f"{attribute.name} must be at least {MIN_SECRET_BYTES} bytes")


@attrs.frozen
class SigningKey:
    """An HMAC secret and the id that tokens signed with it carry; repr hides the secret."""

    key_id: str = attrs.field(validator=_check_key_id)
    secret: bytes = attrs.field(repr=False, validator=_check_secret)


def _check_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty str, got {value!r}")


def _check_optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_text(instance, attribute, value)


_Validator = Callable[[object, "attrs.Attribute[Any]", object], None]


def _check_count(minimum: int, *, optional: bool = False) -> _Validator:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if optional and value is None:
            return
        # bool is an int subclass, and True is never meant as a version or a use count.
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{attribute.name} must be an int >= {minimum}, got {value!r}")

    return check


def _check_utc_second(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise ValueError(f"{attribute.name} must be a UTC datetime, got {value!r}")
    # Tokens carry whole epoch seconds; a fraction would be lost and break equality.
    if value.microsecond:
        raise ValueError(f"{attribute.name} must be a whole second, got {value!r}")


@attrs.frozen
class TokenClaims:
    """What a download token grants: one format of one dataset version, until it expires.

    ``principal_id`` is None for a token not tied to a user; ``max_uses`` is None for no
    limit on uses. Datetimes are UTC and whole seconds, as the token stores epoch seconds.
    """

    token_id: str = attrs.field(validator=_check_text)
    dataset_id: str = attrs.field(validator=_check_text)
    version: int = attrs.field(validator=_check_count(0))
    format: str = attrs.field(validator=_check_text)
    principal_id: str | None = attrs.field(validator=_check_optional_text)
    issued_at: datetime = attrs.field(validator=_check_utc_second)
    expires_at: datetime = attrs.field(validator=_check_utc_second)
    max_uses: int | None = attrs.field(validator=_check_count(1, optional=True))
    key_id: str = attrs.field(validator=_check_key_id)

    def __attrs_post_init__(self) -> None:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be later than issued_at")


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
    # The decoder ignores unused low bits of the last character; insisting on the canonical
    # form means no altered character can decode to the same bytes.
    return raw if _b64encode(raw) == text else None


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def sign_token(claims: TokenClaims, key: SigningKey) -> str:
    """Sign ``claims`` with ``key`` into a compact, URL-safe token string.

    The layout is ``dt1.<payload>.<mac>``: base64url of a compact JSON array, then of the
    HMAC-SHA256 of ``dt1.<payload>``. Raises ValueError if ``claims.key_id`` is not
    ``key.key_id`` or the token would be longer than MAX_TOKEN_LENGTH.
    """
    if claims.key_id != key.key_id:
        raise ValueError(f"claims name key {claims.key_id!r} but are signed with {key.key_id!r}")
    fields = [
        claims.key_id,
        claims.token_id,
        claims.dataset_id,
        claims.version,
        claims.format,
        claims.principal_id,
        (claims.issued_at - _EPOCH) // _SECOND,
        (claims.expires_at - _EPOCH) // _SECOND,
        claims.max_uses,
    ]
    # ensure_ascii keeps lone surrogates representable, so every str round-trips.
    payload = json.dumps(fields, separators=(",", ":")).encode("ascii")
    signed = f"{TOKEN_PREFIX}.{_b64encode(payload)}"
    token = f"{signed}.{_b64encode(_mac(key.secret, signed))}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"token would be {len(token)} characters; at most {MAX_TOKEN_LENGTH}")
    return token


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(payload: bytes) -> list[Any]:
    try:
        fields = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise TokenInvalid("The download token payload does not parse.") from exc
    if not isinstance(fields, list) or len(fields) != 9:
        raise TokenInvalid("The download token payload has an unexpected shape.")
    return fields


def _claims(fields: list[Any]) -> TokenClaims:
    key_id, token_id, dataset_id, version, fmt, principal_id, issued, expires, max_uses = fields
    shape_ok = (
        all(isinstance(text, str) for text in (key_id, token_id, dataset_id, fmt))
        and (principal_id is None or isinstance(principal_id, str))
        and all(_is_int(number) for number in (version, issued, expires))
        and (max_uses is None or _is_int(max_uses))
    )
    if not shape_ok:
        raise TokenInvalid("The download token payload has an unexpected shape.")
    try:
        return TokenClaims(
            token_id=token_id,
            dataset_id=dataset_id,
            version=version,
            format=fmt,
            principal_id=principal_id,
            issued_at=_EPOCH + issued * _SECOND,
            expires_at=_EPOCH + expires * _SECOND,
            max_uses=max_uses,
            key_id=key_id,
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise TokenInvalid("The download token holds invalid claims.") from exc


def read_token(token: str, keys: Mapping[str, SigningKey]) -> TokenClaims:
    """Verify ``token`` against the key its claims name and return the claims.

    ``keys`` maps key id to key; every listed key is trusted, so tokens signed before a
    rotation still verify while their key stays listed. Raises TokenInvalid for a
    malformed, overlong or altered token, or one signed by a key not in ``keys``. Expiry is
    not checked here: call :func:`check_expiry`.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("The download token is not one this server issued.")
    prefix, _, rest = token.partition(".")
    body, dot, mac_text = rest.partition(".")
    payload = _b64decode(body) if prefix == TOKEN_PREFIX and dot else None
    mac = _b64decode(mac_text) if payload is not None else None
    if payload is None or mac is None or len(mac) != _MAC_BYTES:
        raise TokenInvalid("The download token is malformed.")
    # The payload must be parsed before the MAC is checked, to learn which key to check
    # it with; the length cap bounds what an attacker can make us parse.
    fields = _fields(payload)
    key_id = fields[0]
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None or key.key_id != key_id:
        raise TokenInvalid("The download token was signed by a key that is not trusted.")
    if not hmac.compare_digest(_mac(key.secret, f"{prefix}.{body}"), mac):
        raise TokenInvalid("The download token was altered or was not issued by this server.")
    return _claims(fields)


def check_expiry(claims: TokenClaims, now: datetime) -> None:
    """Raise TokenExpired when ``now`` (timezone-aware) is at or after ``claims.expires_at``."""
    if now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if now >= claims.expires_at:
        raise TokenExpired(f"The download token expired at {claims.expires_at.isoformat()}.")


def newest_key(keys: Sequence[SigningKey]) -> SigningKey:
    """Return the key to sign new tokens with: the last one, as rings list oldest first.

    Raises ValueError if ``keys`` is empty.
    """
    if not keys:
        raise ValueError("the key ring is empty")
    return keys[-1]
