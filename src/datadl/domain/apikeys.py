"""API key secrets: how they are made, shown once, hashed and checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import attrs

PREFIX = "ddl"
_KEY = re.compile(r"^ddl_([A-Za-z0-9]{8,32})_([A-Za-z0-9_-]{32,128})$")


@attrs.frozen
class IssuedKey:
    """A new key: ``plaintext`` is shown once to its owner, ``secret_hash`` is stored."""

    key_id: str
    plaintext: str = attrs.field(repr=False)
    secret_hash: str = attrs.field(repr=False)


def issue_key(key_id: str, secret: bytes) -> IssuedKey:
    """Build a key from an id and 32 to 96 random bytes supplied by the caller.

    The id is embedded in the key so a lookup needs no scan; only a SHA-256 hash of the
    secret part is stored. Keys carry 256 bits of entropy, so a fast hash is enough:
    there is nothing to brute-force that a slow hash would protect.
    """
    if not re.fullmatch(r"[A-Za-z0-9]{8,32}", key_id):
        raise ValueError("key ids are 8 to 32 ASCII letters and digits")
    if len(secret) < 32:
        raise ValueError("an API key secret needs at least 32 random bytes")
    if len(secret) > 96:
        # 96 bytes make the 128 base64url characters that split_key accepts at most.
        raise ValueError("an API key secret takes at most 96 bytes")
    text = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return IssuedKey(key_id, f"{PREFIX}_{key_id}_{text}", hash_secret(text))


def hash_secret(secret_text: str) -> str:
    """The stored form of a key's secret part."""
    return hashlib.sha256(secret_text.encode()).hexdigest()


def split_key(plaintext: str) -> tuple[str, str] | None:
    """The (key id, secret part) of a presented key, or None if it is not one of ours."""
    match = _KEY.fullmatch(plaintext)
    if match is None:
        return None
    return match.group(1), match.group(2)


def secret_matches(secret_text: str, stored_hash: str) -> bool:
    """Compare a presented secret with the stored hash in constant time."""
    return hmac.compare_digest(hash_secret(secret_text), stored_hash)
