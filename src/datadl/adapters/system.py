"""Clock, key ring and entropy backed by the operating system."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from datadl.domain.tokens import SigningKey


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to: for tests, demos and replays."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = now.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        """Jump to ``now``."""
        self._now = now.astimezone(UTC)

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self._now += timedelta(seconds=seconds)


class StaticKeyRing:
    """Keys given at construction, oldest first; the last one signs tokens."""

    def __init__(self, signing_keys: Sequence[SigningKey], cursor_key: bytes) -> None:
        if not signing_keys:
            raise ValueError("a key ring needs at least one signing key")
        if len(cursor_key) < 32:
            raise ValueError("the cursor key needs at least 32 bytes")
        self._keys = tuple(signing_keys)
        self._cursor_key = cursor_key

    @classmethod
    def generate(cls) -> StaticKeyRing:
        """A ring of fresh random keys: valid for one process's lifetime only."""
        return cls([SigningKey("k1", secrets.token_bytes(32))], secrets.token_bytes(32))

    def signing_keys(self) -> Sequence[SigningKey]:
        return self._keys

    def cursor_key(self) -> bytes:
        return self._cursor_key

    def __repr__(self) -> str:
        return f"StaticKeyRing(key_ids={[k.key_id for k in self._keys]!r})"


class SystemEntropy:
    """Ids and secrets from the operating system's CSPRNG."""

    def new_id(self) -> str:
        # 15 random bytes are 120 bits: 24 base32 characters, no padding, URL-safe.
        return base64.b32encode(secrets.token_bytes(15)).decode().lower()

    def secret(self, nbytes: int) -> bytes:
        return secrets.token_bytes(nbytes)
