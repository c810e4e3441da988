"""The Clock, KeyRing and Entropy ports: time, keys and randomness come from outside."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from datadl.domain.tokens import SigningKey


class Clock(Protocol):
    """The current time."""

    def now(self) -> datetime:
        """The current time, timezone-aware in UTC. Raises nothing."""
        ...


class KeyRing(Protocol):
    """The secrets datadl signs with; rotation appends a key and later drops old ones."""

    def signing_keys(self) -> Sequence[SigningKey]:
        """Every key that still verifies, oldest first; the last one signs. Raises nothing."""
        ...

    def cursor_key(self) -> bytes:
        """The key that authenticates pagination cursors. Raises nothing."""
        ...


class Entropy(Protocol):
    """Randomness for ids and secrets."""

    def new_id(self) -> str:
        """A fresh opaque id, URL-safe and unguessable. Raises nothing."""
        ...

    def secret(self, nbytes: int) -> bytes:
        """``nbytes`` bytes from a cryptographically secure source. Raises nothing."""
        ...
