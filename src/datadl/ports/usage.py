"""The UsageStore port: counters that must change atomically across every worker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from datadl.domain.quotas import Reservation, ReserveOutcome, Usage


@attrs.frozen
class TokenUse:
    """The outcome of presenting a token: allowed or not, and its sessions so far."""

    allowed: bool
    uses: int
    new_session: bool


@attrs.frozen
class CleanupCounts:
    """What one usage cleanup removed."""

    reservations: int = 0
    counters: int = 0
    token_uses: int = 0
    revocations: int = 0
    sessions: int = 0
    rate_states: int = 0


class UsageStore(Protocol):
    """Rate-limit state, quota counters and reservations, token uses and revocations.

    Every check-and-change is atomic across processes sharing the store. Every method
    may raise ``Unavailable`` when the store cannot be reached.
    """

    async def get_tat(self, key: str) -> float | None:
        """The GCRA theoretical arrival time stored under ``key``, or None."""
        ...

    async def compare_and_set_tat(
        self, key: str, expected: float | None, new: float, *, expires_at: float
    ) -> bool:
        """Set ``key`` to ``new`` only if it still holds ``expected``; True if it was set.

        ``expires_at`` (epoch seconds) is when the state may be forgotten.
        """
        ...

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        """Charge the reservation on every counter it names if all have room, else none.

        Follows ``domain.quotas.first_refusal``. ``Conflict`` if the id exists.
        """
        ...

    async def settle(self, reservation_id: str, bytes_sent: int) -> bool:
        """Replace the reservation with what was delivered (``domain.quotas.settled_amount``).

        Idempotent: True the first time, False when already settled or unknown.
        """
        ...

    async def usage(self, keys: Sequence[str]) -> Sequence[Usage]:
        """Current counter values (reservations included), zero for unknown keys."""
        ...

    async def use_token(
        self,
        token_id: str,
        session_key: str,
        *,
        max_uses: int | None,
        now: datetime,
        idle_seconds: float,
        expires_at: datetime,
    ) -> TokenUse:
        """Count a request under a token: one use per download session.

        A request whose session was seen within ``idle_seconds`` continues it and is
        allowed; a new session is allowed only while fewer than ``max_uses`` sessions
        were opened. A refused request changes nothing.
        """
        ...

    async def touch_session(self, session_key: str, *, now: datetime, idle_seconds: float) -> bool:
        """Record a request of a logical download; True when it opens a new one."""
        ...

    async def revoke_token(self, token_id: str, *, expires_at: datetime) -> None:
        """Refuse the token from now on (until it would have expired anyway)."""
        ...

    async def is_revoked(self, token_id: str) -> bool:
        """Whether the token was revoked."""
        ...

    async def cleanup(self, now: datetime) -> CleanupCounts:
        """Drop expired reservations (left charged), counters of past windows, token uses
        and revocations of expired tokens, idle sessions and stale rate-limit state."""
        ...
