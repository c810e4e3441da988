"""The UsageStore contract suite: subclass ``UsageStoreContract`` and provide ``usage_store``."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from datadl.domain.errors import Conflict
from datadl.domain.quotas import ReserveOutcome, Usage
from datadl.ports.usage import CleanupCounts, TokenUse, UsageStore
from datadl.testing.builders import T0, at, charge, reservation

HOUR = at(3600)
DAY = at(86_400)


async def _use(
    store: UsageStore,
    token_id: str,
    session_key: str,
    *,
    seconds: float,
    max_uses: int | None = 2,
    idle_seconds: float = 60,
) -> TokenUse:
    return await store.use_token(
        token_id,
        session_key,
        max_uses=max_uses,
        now=at(seconds),
        idle_seconds=idle_seconds,
        expires_at=DAY,
    )


class UsageStoreContract:
    """Every promise of the UsageStore port, for any adapter.

    Subclass it as ``TestMyUsageStore(UsageStoreContract)`` and provide a ``usage_store``
    fixture that yields an empty store. Its cleanup rules are pinned here: whatever is at
    or past its expiry has expired, a session is idle once more than its ``idle_seconds``
    passed since it was last seen, and ``sessions`` counts every session dropped.
    """

    # rate-limit state

    async def test_tat_is_compared_and_set(self, usage_store: UsageStore) -> None:
        """A TAT is set only over the value the caller expected, absent meaning None."""
        assert await usage_store.get_tat("k") is None
        assert await usage_store.compare_and_set_tat("k", None, 10.5, expires_at=100.0)
        assert not await usage_store.compare_and_set_tat("k", None, 11.0, expires_at=100.0)
        assert not await usage_store.compare_and_set_tat("k", 10.0, 11.0, expires_at=100.0)
        assert await usage_store.get_tat("k") == 10.5
        assert await usage_store.compare_and_set_tat("k", 10.5, 12.25, expires_at=100.0)
        assert await usage_store.get_tat("k") == 12.25
        assert await usage_store.get_tat("other") is None
        assert not await usage_store.compare_and_set_tat("other", 12.25, 1.0, expires_at=100.0)

    async def test_concurrent_tat_updates_have_one_winner(self, usage_store: UsageStore) -> None:
        """Of many writers expecting the same TAT, exactly one succeeds."""
        await usage_store.compare_and_set_tat("k", None, 1.0, expires_at=100.0)
        results = await asyncio.gather(
            *(
                usage_store.compare_and_set_tat("k", 1.0, 2.0 + i, expires_at=100.0)
                for i in range(50)
            )
        )
        assert results.count(True) == 1
        assert await usage_store.get_tat("k") == 2.0 + results.index(True)

    # quotas

    async def test_unknown_counters_are_zero(self, usage_store: UsageStore) -> None:
        """Usage of keys never charged is zero, in the order asked, duplicates included."""
        assert list(await usage_store.usage([])) == []
        assert list(await usage_store.usage(["a", "b", "a"])) == [Usage(), Usage(), Usage()]

    async def test_reserve_charges_every_counter(self, usage_store: UsageStore) -> None:
        """An accepted reservation adds its bytes and downloads to each named counter."""
        outcome = await usage_store.reserve(
            reservation("r1", charge("u", bytes_limit=1000), charge("o"), bytes=300)
        )
        assert outcome == ReserveOutcome.accepted()
        await usage_store.reserve(reservation("r2", charge("u"), bytes=50, downloads=0))
        assert list(await usage_store.usage(["u", "o", "x"])) == [
            Usage(bytes=350, downloads=1),
            Usage(bytes=300, downloads=1),
            Usage(),
        ]

    async def test_reserve_is_all_or_nothing(self, usage_store: UsageStore) -> None:
        """When one of two counters lacks room, neither is charged and the refusal names it."""
        await usage_store.reserve(reservation("r1", charge("o"), bytes=700))
        user_charge = charge("u", bytes_limit=10_000)
        org_charge = charge("o", bytes_limit=1000)
        outcome = await usage_store.reserve(reservation("r2", user_charge, org_charge, bytes=400))
        assert outcome == ReserveOutcome.refused_by(org_charge, Usage(bytes=700, downloads=1))
        assert list(await usage_store.usage(["u", "o"])) == [
            Usage(),
            Usage(bytes=700, downloads=1),
        ]
        assert not await usage_store.settle("r2", 0)

    async def test_refusal_names_the_first_full_counter(self, usage_store: UsageStore) -> None:
        """With several full counters the first in the reservation's order is named."""
        await usage_store.reserve(reservation("r0", charge("a"), charge("b"), bytes=5))
        first = charge("a", downloads_limit=1)
        second = charge("b", bytes_limit=5)
        outcome = await usage_store.reserve(reservation("r1", first, second, bytes=1))
        assert outcome == ReserveOutcome.refused_by(first, Usage(bytes=5, downloads=1))
        outcome = await usage_store.reserve(reservation("r2", second, first, bytes=1))
        assert outcome == ReserveOutcome.refused_by(second, Usage(bytes=5, downloads=1))

    async def test_reserve_fills_a_counter_exactly(self, usage_store: UsageStore) -> None:
        """A reservation that reaches a cap exactly fits; one byte or download more does not."""
        bytes_cap = charge("b", bytes_limit=100)
        downloads_cap = charge("d", downloads_limit=2)
        assert (await usage_store.reserve(reservation("r1", bytes_cap, bytes=100))).ok
        assert not (await usage_store.reserve(reservation("r2", bytes_cap, bytes=1))).ok
        assert (await usage_store.reserve(reservation("r3", bytes_cap, bytes=0, downloads=0))).ok
        assert (await usage_store.reserve(reservation("r4", downloads_cap, downloads=2))).ok
        assert not (await usage_store.reserve(reservation("r5", downloads_cap, bytes=0))).ok
        assert list(await usage_store.usage(["b", "d"])) == [
            Usage(bytes=100, downloads=1),
            Usage(bytes=100, downloads=2),
        ]

    async def test_reservation_id_clash_conflicts(self, usage_store: UsageStore) -> None:
        """A reservation id in use is a Conflict and charges nothing more."""
        await usage_store.reserve(reservation("r1", charge("u"), bytes=10))
        with pytest.raises(Conflict):
            await usage_store.reserve(reservation("r1", charge("u"), charge("o"), bytes=99))
        assert list(await usage_store.usage(["u", "o"])) == [Usage(10, 1), Usage()]

    async def test_settle_swaps_reserved_for_sent_bytes(self, usage_store: UsageStore) -> None:
        """Settling replaces reserved bytes by bytes sent on every counter, once."""
        await usage_store.reserve(reservation("r1", charge("u"), charge("o"), bytes=1000))
        await usage_store.reserve(reservation("r2", charge("u"), bytes=10))
        assert await usage_store.settle("r1", 400)
        assert list(await usage_store.usage(["u", "o"])) == [Usage(410, 2), Usage(400, 1)]
        assert not await usage_store.settle("r1", 400)
        assert not await usage_store.settle("r1", 0)
        assert list(await usage_store.usage(["u", "o"])) == [Usage(410, 2), Usage(400, 1)]
        assert not await usage_store.settle("nope", 5)

    async def test_settle_with_nothing_sent_refunds(self, usage_store: UsageStore) -> None:
        """A download that sent no byte gives back its bytes and its download."""
        await usage_store.reserve(reservation("r0", charge("u"), bytes=7))
        await usage_store.reserve(reservation("r1", charge("u"), charge("o"), bytes=1000))
        assert await usage_store.settle("r1", 0)
        assert list(await usage_store.usage(["u", "o"])) == [Usage(7, 1), Usage(0, 0)]

    async def test_settle_may_exceed_the_reservation(self, usage_store: UsageStore) -> None:
        """Bytes sent beyond the reservation are counted, even past the cap."""
        cap = charge("u", bytes_limit=100)
        await usage_store.reserve(reservation("r1", cap, bytes=100))
        assert await usage_store.settle("r1", 150)
        assert list(await usage_store.usage(["u"])) == [Usage(150, 1)]

    async def test_concurrent_reservations_never_overrun(self, usage_store: UsageStore) -> None:
        """Of 200 concurrent reservations with room for 37, exactly 37 win; settling adds up."""
        amount = 1000
        cap = charge("q", bytes_limit=37 * amount)
        loose = charge("q-org")
        outcomes = await asyncio.gather(
            *(
                usage_store.reserve(reservation(f"r{i}", loose, cap, bytes=amount))
                for i in range(200)
            )
        )
        winners = [f"r{i}" for i, o in enumerate(outcomes) if o.ok]
        assert len(winners) == 37
        assert all(o.refused == cap for o in outcomes if not o.ok)
        assert list(await usage_store.usage(["q", "q-org"])) == [Usage(37 * amount, 37)] * 2
        rng = random.Random(37)  # noqa: S311 - test data, not secrets
        sent = {rid: rng.choice((0, amount, rng.randrange(amount))) for rid in winners}
        settled = await asyncio.gather(
            *(usage_store.settle(rid, n) for rid, n in sent.items()),
            *(usage_store.settle(rid, n) for rid, n in sent.items()),
            *(usage_store.settle(f"r{i}", 1) for i, o in enumerate(outcomes) if not o.ok),
        )
        assert settled.count(True) == 37
        expected = Usage(sum(sent.values()), sum(1 for n in sent.values() if n > 0))
        assert list(await usage_store.usage(["q", "q-org"])) == [expected, expected]

    # tokens and sessions

    async def test_token_counts_one_use_per_session(self, usage_store: UsageStore) -> None:
        """Requests within the idle time continue a session; new sessions stop at max_uses."""
        assert await _use(usage_store, "t", "a", seconds=0) == TokenUse(True, 1, True)
        assert await _use(usage_store, "t", "a", seconds=30) == TokenUse(True, 1, False)
        assert await _use(usage_store, "t", "a", seconds=90) == TokenUse(True, 1, False)
        assert await _use(usage_store, "t", "b", seconds=91) == TokenUse(True, 2, True)
        assert await _use(usage_store, "t", "c", seconds=92) == TokenUse(False, 2, False)
        assert await _use(usage_store, "t", "b", seconds=150) == TokenUse(True, 2, False)
        assert await _use(usage_store, "t", "a", seconds=151) == TokenUse(False, 2, False)

    async def test_idle_boundary_continues_the_session(self, usage_store: UsageStore) -> None:
        """A request exactly idle_seconds after the last one continues; a microsecond later not."""
        assert (await _use(usage_store, "t", "a", seconds=0, max_uses=None)).new_session
        assert not (await _use(usage_store, "t", "a", seconds=60, max_uses=None)).new_session
        late = await usage_store.use_token(
            "t",
            "a",
            max_uses=None,
            now=at(120) + timedelta(microseconds=1),
            idle_seconds=60,
            expires_at=DAY,
        )
        assert late == TokenUse(True, 2, True)

    async def test_refused_request_changes_nothing(self, usage_store: UsageStore) -> None:
        """A refused session is not opened: asked again with room, it opens as new."""
        await _use(usage_store, "t", "a", seconds=0, max_uses=1)
        assert await _use(usage_store, "t", "b", seconds=1, max_uses=1) == TokenUse(False, 1, False)
        assert await _use(usage_store, "t", "b", seconds=2, max_uses=2) == TokenUse(True, 2, True)

    async def test_token_limits_edge_cases(self, usage_store: UsageStore) -> None:
        """No limit allows every session, zero allows none, and tokens count apart."""
        for i in range(20):
            assert await _use(usage_store, "free", f"s{i}", seconds=i, max_uses=None) == TokenUse(
                True, i + 1, True
            )
        assert await _use(usage_store, "none", "s0", seconds=0, max_uses=0) == TokenUse(
            False, 0, False
        )
        assert await _use(usage_store, "other", "s0", seconds=0) == TokenUse(True, 1, True)

    async def test_token_sessions_are_apart_from_touched_ones(
        self, usage_store: UsageStore
    ) -> None:
        """A key used under a token is still new to touch_session, and the reverse."""
        await _use(usage_store, "t", "k", seconds=0)
        assert await usage_store.touch_session("k", now=at(1), idle_seconds=60)
        assert await usage_store.touch_session("j", now=at(1), idle_seconds=60)
        assert await _use(usage_store, "t", "j", seconds=2) == TokenUse(True, 2, True)

    async def test_touch_session_opens_and_continues(self, usage_store: UsageStore) -> None:
        """A session is new on its first request and after an idle gap, continued in between."""
        assert await usage_store.touch_session("s", now=at(0), idle_seconds=10)
        assert not await usage_store.touch_session("s", now=at(10), idle_seconds=10)
        assert not await usage_store.touch_session("s", now=at(20), idle_seconds=10)
        assert await usage_store.touch_session("s", now=at(31), idle_seconds=10)
        assert await usage_store.touch_session("other", now=at(31), idle_seconds=10)

    async def test_concurrent_token_uses_respect_max_uses(self, usage_store: UsageStore) -> None:
        """Of many concurrent new sessions under one token, exactly max_uses are allowed."""
        results = await asyncio.gather(
            *(_use(usage_store, "t", f"s{i}", seconds=0, max_uses=5) for i in range(40))
        )
        assert sum(r.allowed for r in results) == 5
        assert sorted(r.uses for r in results if r.allowed) == [1, 2, 3, 4, 5]
        touched = await asyncio.gather(
            *(usage_store.touch_session("x", now=T0, idle_seconds=60) for _ in range(20))
        )
        assert touched.count(True) == 1

    async def test_revocation_is_remembered(self, usage_store: UsageStore) -> None:
        """A revoked token reads as revoked, others do not; revoking twice is harmless."""
        assert not await usage_store.is_revoked("t1")
        await usage_store.revoke_token("t1", expires_at=DAY)
        await usage_store.revoke_token("t1", expires_at=DAY)
        assert await usage_store.is_revoked("t1")
        assert not await usage_store.is_revoked("t2")

    # cleanup

    async def test_cleanup_of_an_empty_store(self, usage_store: UsageStore) -> None:
        """Cleaning an empty store removes nothing."""
        assert await usage_store.cleanup(DAY) == CleanupCounts()

    async def test_cleanup_removes_exactly_what_expired(self, usage_store: UsageStore) -> None:
        """Cleanup drops expired entries of every kind, counts them, and keeps the rest."""
        now = HOUR
        day_end = at(1800)
        # reservations: r-old expired unsettled; r-edge expires exactly now; r-live stays.
        await usage_store.reserve(
            reservation("r-old", charge("live"), bytes=10, expires_at=at(100))
        )
        await usage_store.reserve(reservation("r-edge", charge("live"), bytes=20, expires_at=now))
        await usage_store.reserve(
            reservation("r-live", charge("live"), bytes=40, expires_at=now + timedelta(seconds=1))
        )
        await usage_store.reserve(
            reservation("r-settled", charge("live"), bytes=80, expires_at=at(100))
        )
        await usage_store.settle("r-settled", 5)
        # counters: one whose window ended before now, one at now, one later.
        await usage_store.reserve(
            reservation("r-past", charge("past", window_end=day_end), bytes=1, expires_at=DAY)
        )
        await usage_store.reserve(
            reservation("r-now", charge("at-now", window_end=now), bytes=1, expires_at=DAY)
        )
        # tokens: "t-old" expires before now and "t-edge" at now, "t-live" later; each
        # has one idle session and one fresh session.
        for token_id, expires in (("t-old", at(600)), ("t-edge", now), ("t-live", DAY)):
            for session_key, seconds in (("idle", 0), ("fresh", 3590)):
                await usage_store.use_token(
                    token_id,
                    session_key,
                    max_uses=None,
                    now=at(seconds),
                    idle_seconds=60,
                    expires_at=expires,
                )
        await usage_store.revoke_token("t-old", expires_at=at(600))
        await usage_store.revoke_token("t-edge", expires_at=now)
        await usage_store.revoke_token("t-live", expires_at=DAY)
        # plain sessions: idle longer than their idle time, exactly at it, and fresh.
        await usage_store.touch_session("s-idle", now=at(0), idle_seconds=60)
        await usage_store.touch_session("s-edge", now=at(3540), idle_seconds=60)
        await usage_store.touch_session("s-fresh", now=at(3599), idle_seconds=60)
        # rate states: expired before, at, and after now.
        epoch = now.timestamp()
        await usage_store.compare_and_set_tat("k-old", None, 1.0, expires_at=epoch - 10)
        await usage_store.compare_and_set_tat("k-edge", None, 2.0, expires_at=epoch)
        await usage_store.compare_and_set_tat("k-live", None, 3.0, expires_at=epoch + 10)

        counts = await usage_store.cleanup(now)

        assert counts == CleanupCounts(
            reservations=2, counters=2, token_uses=2, revocations=2, sessions=6, rate_states=2
        )
        # Expired reservations stay charged but cannot be settled any more.
        assert not await usage_store.settle("r-old", 0)
        assert not await usage_store.settle("r-edge", 0)
        assert list(await usage_store.usage(["live", "past", "at-now"])) == [
            Usage(10 + 20 + 40 + 5, 4),
            Usage(),
            Usage(),
        ]
        assert await usage_store.settle("r-live", 0)
        assert list(await usage_store.usage(["live"])) == [Usage(35, 3)]
        # The expired token starts afresh; the live one kept its uses and fresh session.
        assert await _use(usage_store, "t-old", "fresh", seconds=3601) == TokenUse(True, 1, True)
        assert await _use(usage_store, "t-live", "fresh", seconds=3601) == TokenUse(True, 2, False)
        assert await _use(usage_store, "t-live", "idle", seconds=3602, max_uses=None) == TokenUse(
            True, 3, True
        )
        assert [await usage_store.is_revoked(t) for t in ("t-old", "t-edge", "t-live")] == [
            False,
            False,
            True,
        ]
        assert not await usage_store.touch_session("s-fresh", now=at(3601), idle_seconds=60)
        assert await usage_store.touch_session("s-edge", now=at(3601), idle_seconds=60)
        assert [await usage_store.get_tat(k) for k in ("k-old", "k-edge", "k-live")] == [
            None,
            None,
            3.0,
        ]
        assert await usage_store.cleanup(now) == CleanupCounts()

    async def test_cleanup_after_a_counter_goes_keeps_settle_sane(
        self, usage_store: UsageStore
    ) -> None:
        """Settling after the counter's window was cleaned up does not revive the counter."""
        window_end = at(60)
        await usage_store.reserve(
            reservation("r1", charge("c", window_end=window_end), bytes=100, expires_at=HOUR)
        )
        assert (await usage_store.cleanup(window_end)).counters == 1
        assert await usage_store.settle("r1", 0)
        assert list(await usage_store.usage(["c"])) == [Usage()]
