"""An in-process UsageStore: quota counters, reservations, token uses and rate-limit state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import attrs

from datadl.domain.errors import Conflict
from datadl.domain.quotas import Reservation, ReserveOutcome, Usage, first_refusal, settled_amount
from datadl.ports.usage import CleanupCounts, TokenUse

K = TypeVar("K")
V = TypeVar("V")


@attrs.define
class _Counter:
    usage: Usage
    window_end: datetime


@attrs.define
class _Session:
    last_seen: datetime
    idle: timedelta

    def continues(self, now: datetime, idle: timedelta) -> bool:
        return now - self.last_seen <= idle

    def see(self, now: datetime, idle: timedelta) -> None:
        # Requests handled by several workers may arrive out of order; time never goes back.
        self.last_seen = max(self.last_seen, now)
        self.idle = idle

    def is_idle(self, now: datetime) -> bool:
        return now - self.last_seen > self.idle


@attrs.define
class _Token:
    uses: int
    expires_at: datetime
    sessions: dict[str, _Session] = attrs.field(factory=dict)


@attrs.define
class _RateState:
    tat: float
    expires_at: float


def _idle(idle_seconds: float) -> timedelta:
    if idle_seconds < 0:
        raise ValueError("idle_seconds must not be negative")
    return timedelta(seconds=idle_seconds)


class MemoryUsageStore:
    """The UsageStore port held in one process, for one process's workers.

    Every operation runs under one ``asyncio.Lock`` and never awaits between reading and
    writing its state. A settled reservation is forgotten at once, so settling it again
    returns False. Token sessions are kept per token, apart from the sessions of
    ``touch_session``; cleanup counts every session it drops (those of an expired token
    included) under ``sessions``. Times at or past an expiry have expired.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._rates: dict[str, _RateState] = {}
        self._counters: dict[str, _Counter] = {}
        self._reservations: dict[str, Reservation] = {}
        self._tokens: dict[str, _Token] = {}
        self._revocations: dict[str, datetime] = {}
        self._sessions: dict[str, _Session] = {}

    # rate limits

    async def get_tat(self, key: str) -> float | None:
        async with self._lock:
            state = self._rates.get(key)
            return None if state is None else state.tat

    async def compare_and_set_tat(
        self, key: str, expected: float | None, new: float, *, expires_at: float
    ) -> bool:
        async with self._lock:
            state = self._rates.get(key)
            current = None if state is None else state.tat
            if current != expected:
                return False
            self._rates[key] = _RateState(tat=new, expires_at=expires_at)
            return True

    # quotas

    async def reserve(self, reservation: Reservation) -> ReserveOutcome:
        async with self._lock:
            if reservation.id in self._reservations:
                raise Conflict(f"A reservation with id {reservation.id!r} exists.")
            usages = [self._usage_of(c.key) for c in reservation.charges]
            outcome = first_refusal(
                reservation.charges, usages, reservation.bytes, reservation.downloads
            )
            if not outcome.ok:
                return outcome
            for charge in reservation.charges:
                counter = self._counters.get(charge.key)
                if counter is None:
                    counter = self._counters[charge.key] = _Counter(Usage(), charge.window_end)
                counter.usage = counter.usage.plus(reservation.bytes, reservation.downloads)
                counter.window_end = max(counter.window_end, charge.window_end)
            self._reservations[reservation.id] = reservation
            return outcome

    async def settle(self, reservation_id: str, bytes_sent: int) -> bool:
        async with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None:
                return False
            delta_bytes, delta_downloads = settled_amount(reservation, bytes_sent)
            del self._reservations[reservation_id]
            for charge in reservation.charges:
                # A counter whose window was cleaned up is gone for good; do not revive it.
                counter = self._counters.get(charge.key)
                if counter is not None:
                    counter.usage = counter.usage.plus(delta_bytes, delta_downloads)
            return True

    async def usage(self, keys: Sequence[str]) -> Sequence[Usage]:
        async with self._lock:
            return [self._usage_of(key) for key in keys]

    def _usage_of(self, key: str) -> Usage:
        counter = self._counters.get(key)
        return Usage() if counter is None else counter.usage

    # tokens and sessions

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
        idle = _idle(idle_seconds)
        async with self._lock:
            token = self._tokens.get(token_id)
            uses = 0 if token is None else token.uses
            session = None if token is None else token.sessions.get(session_key)
            if token is not None and session is not None and session.continues(now, idle):
                session.see(now, idle)
                token.expires_at = max(token.expires_at, expires_at)
                return TokenUse(allowed=True, uses=uses, new_session=False)
            if max_uses is not None and uses >= max_uses:
                return TokenUse(allowed=False, uses=uses, new_session=False)
            if token is None:
                token = self._tokens[token_id] = _Token(uses=0, expires_at=expires_at)
            token.uses += 1
            token.expires_at = max(token.expires_at, expires_at)
            token.sessions[session_key] = _Session(last_seen=now, idle=idle)
            return TokenUse(allowed=True, uses=token.uses, new_session=True)

    async def touch_session(self, session_key: str, *, now: datetime, idle_seconds: float) -> bool:
        idle = _idle(idle_seconds)
        async with self._lock:
            session = self._sessions.get(session_key)
            if session is not None and session.continues(now, idle):
                session.see(now, idle)
                return False
            self._sessions[session_key] = _Session(last_seen=now, idle=idle)
            return True

    async def revoke_token(self, token_id: str, *, expires_at: datetime) -> None:
        async with self._lock:
            known = self._revocations.get(token_id)
            self._revocations[token_id] = expires_at if known is None else max(known, expires_at)

    async def is_revoked(self, token_id: str) -> bool:
        async with self._lock:
            return token_id in self._revocations

    # cleanup

    async def cleanup(self, now: datetime) -> CleanupCounts:
        async with self._lock:
            reservations = _drop(self._reservations, lambda r: r.expires_at <= now)
            counters = _drop(self._counters, lambda c: c.window_end <= now)
            sessions = 0
            for token in self._tokens.values():
                if token.expires_at <= now:
                    sessions += len(token.sessions)
                else:
                    sessions += _drop(token.sessions, lambda s: s.is_idle(now))
            token_uses = _drop(self._tokens, lambda t: t.expires_at <= now)
            revocations = _drop(self._revocations, lambda expires_at: expires_at <= now)
            sessions += _drop(self._sessions, lambda s: s.is_idle(now))
            epoch = now.timestamp()
            rate_states = _drop(self._rates, lambda s: s.expires_at <= epoch)
            return CleanupCounts(
                reservations=reservations,
                counters=counters,
                token_uses=token_uses,
                revocations=revocations,
                sessions=sessions,
                rate_states=rate_states,
            )


def _drop(mapping: dict[K, V], doomed: Callable[[V], bool]) -> int:
    keys = [k for k, v in mapping.items() if doomed(v)]
    for key in keys:
        del mapping[key]
    return len(keys)
