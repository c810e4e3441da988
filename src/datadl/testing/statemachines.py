"""Hypothesis state machines that drive two adapters of a port alike and check they agree."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from datadl.domain.access import Principal
from datadl.domain.errors import DatadlError
from datadl.domain.model import Dataset, Role, Visibility
from datadl.domain.policy import PolicyOverride
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.ports.catalog import Audience, Catalog, DatasetQuery
from datadl.ports.usage import UsageStore
from datadl.testing.builders import (
    T0,
    audience_for,
    dataset,
    grant,
    organization,
    user,
    version_of,
)

P = TypeVar("P")
T = TypeVar("T")


@attrs.frozen
class Raised:
    """An operation's outcome when it raised a datadl or value error: the error's class."""

    error: type[BaseException]


async def _outcome(call: Awaitable[Any]) -> Any:
    try:
        value = await call
    except (DatadlError, ValueError) as exc:
        return Raised(type(exc))
    # Adapters may return any sequence type; only the items and their order count.
    return list(value) if isinstance(value, list | tuple) else value


class _Agreement(RuleBasedStateMachine, Generic[P]):
    """Runs every operation on a reference and a candidate, on the machine's own loop."""

    def __init__(self) -> None:
        super().__init__()
        # One loop per run: adapters bound to a loop (pools, locks) never cross runs.
        self.loop = asyncio.new_event_loop()
        self.reference: P = self.run(_build(self.make_reference))
        self.candidate: P = self.run(_build(self.make_candidate))

    def make_reference(self) -> P | Awaitable[P]:
        raise NotImplementedError

    def make_candidate(self) -> P | Awaitable[P]:
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine to completion on this machine's loop."""
        return self.loop.run_until_complete(coro)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on both adapters, assert equal outcomes and return it."""
        return self.both(lambda adapter: getattr(adapter, method)(*args, **kwargs))

    def both(self, operation: Callable[[P], Awaitable[Any]]) -> Any:
        """Apply ``operation`` to both adapters, assert equal outcomes and return it.

        An outcome is the returned value (sequences as lists) or ``Raised`` with the class
        of a ``DatadlError`` or ``ValueError``.
        """
        expected = self.run(_outcome(operation(self.reference)))
        actual = self.run(_outcome(operation(self.candidate)))
        assert actual == expected, f"candidate gave {actual!r}, reference gave {expected!r}"
        return expected

    def teardown(self) -> None:
        try:
            for store in (self.reference, self.candidate):
                aclose = getattr(store, "aclose", None)
                if aclose is not None:
                    self.run(aclose())
        finally:
            self.loop.close()


async def _build(factory: Callable[[], T | Awaitable[T]]) -> T:
    made = factory()
    if inspect.isawaitable(made):
        return await made
    return made


# --- UsageStore ---------------------------------------------------------------------------

_COUNTERS = {"q:user:day": 3600, "q:user:month": 86_400, "q:org:day": 7200}
_BYTE_LIMITS = (None, None, 0, 50, 100, 250, 1000)
_DOWNLOAD_LIMITS = (None, None, 0, 1, 3)
_TOKENS = {"t0": 300, "t1": 3600, "t2": 86_400}
_SESSIONS = ("s0", "s1", "s2")
_RATE_KEYS = ("rate:a", "rate:b")
_STEPS = (0, 1, 5, 30, 60, 600, 1800, 3600, 86_400)

_charges = st.lists(
    st.tuples(
        st.sampled_from(sorted(_COUNTERS)),
        st.sampled_from(_BYTE_LIMITS),
        st.sampled_from(_DOWNLOAD_LIMITS),
    ),
    max_size=3,
    unique_by=lambda c: c[0],
)


def usage_store_agreement(
    make_reference: Callable[[], UsageStore | Awaitable[UsageStore]],
    make_candidate: Callable[[], UsageStore | Awaitable[UsageStore]],
) -> type[RuleBasedStateMachine]:
    """A state machine class that checks two UsageStores agree on random operations.

    Each factory builds a fresh, empty store (it may be a coroutine function); a store
    with an ``aclose`` coroutine method is closed at teardown. Run the result with
    ``run_state_machine_as_test`` or its ``TestCase`` attribute.
    """

    class UsageStoreAgreement(_Agreement[UsageStore]):
        """Two UsageStores, one clock, the same operations, equal answers."""

        def make_reference(self) -> UsageStore | Awaitable[UsageStore]:
            return make_reference()

        def make_candidate(self) -> UsageStore | Awaitable[UsageStore]:
            return make_candidate()

        def __init__(self) -> None:
            super().__init__()
            self.now = T0
            self.issued = 0
            self.accepted: list[str] = []

        def _window_end(self, key: str) -> datetime:
            return T0 + timedelta(seconds=_COUNTERS[key])

        @rule(
            reuse=st.booleans(),
            pick=st.integers(0, 99),
            charges=_charges,
            nbytes=st.integers(0, 120),
            downloads=st.integers(0, 2),
            ttl=st.sampled_from((0, 30, 600, 7200)),
        )
        def reserve(
            self,
            reuse: bool,
            pick: int,
            charges: list[tuple[str, int | None, int | None]],
            nbytes: int,
            downloads: int,
            ttl: int,
        ) -> None:
            if reuse and self.accepted:
                reservation_id = self.accepted[pick % len(self.accepted)]
            else:
                self.issued += 1
                reservation_id = f"r{self.issued}"
            res = Reservation(
                id=reservation_id,
                charges=tuple(
                    QuotaCharge(
                        key=key,
                        subject=QuotaSubject.USER,
                        bytes_limit=bytes_limit,
                        downloads_limit=downloads_limit,
                        window_end=self._window_end(key),
                    )
                    for key, bytes_limit, downloads_limit in charges
                ),
                bytes=nbytes,
                downloads=downloads,
                expires_at=self.now + timedelta(seconds=ttl),
            )
            outcome = self.call("reserve", res)
            if not isinstance(outcome, Raised) and outcome.ok:
                self.accepted.append(reservation_id)

        @precondition(lambda self: self.accepted)
        @rule(pick=st.integers(0, 99), sent=st.integers(0, 150))
        def settle(self, pick: int, sent: int) -> None:
            self.call("settle", self.accepted[pick % len(self.accepted)], sent)

        @rule(sent=st.integers(0, 10))
        def settle_unknown(self, sent: int) -> None:
            self.call("settle", "r-unknown", sent)

        @rule(keys=st.lists(st.sampled_from([*_COUNTERS, "q:unknown"]), max_size=4))
        def usage(self, keys: list[str]) -> None:
            self.call("usage", keys)

        @rule(
            token_id=st.sampled_from(sorted(_TOKENS)),
            session_key=st.sampled_from(_SESSIONS),
            max_uses=st.sampled_from((None, 0, 1, 2, 3)),
            idle=st.sampled_from((0, 5, 60, 1800)),
        )
        def use_token(
            self, token_id: str, session_key: str, max_uses: int | None, idle: int
        ) -> None:
            expires_at = T0 + timedelta(seconds=_TOKENS[token_id])
            self.call(
                "use_token",
                token_id,
                session_key,
                max_uses=max_uses,
                now=self.now,
                idle_seconds=idle,
                expires_at=expires_at,
            )

        @rule(session_key=st.sampled_from(_SESSIONS), idle=st.sampled_from((0, 5, 60, 1800)))
        def touch_session(self, session_key: str, idle: int) -> None:
            self.call("touch_session", session_key, now=self.now, idle_seconds=idle)

        @rule(token_id=st.sampled_from(sorted(_TOKENS)))
        def revoke_token(self, token_id: str) -> None:
            expires_at = T0 + timedelta(seconds=_TOKENS[token_id])
            self.call("revoke_token", token_id, expires_at=expires_at)

        @rule(
            key=st.sampled_from(_RATE_KEYS),
            expect_current=st.booleans(),
            other=st.one_of(st.none(), st.sampled_from((0.0, 1.5, 100.0))),
            new=st.floats(0, 1e6, allow_nan=False),
            ttl=st.sampled_from((0, 10, 3600)),
        )
        def compare_and_set_tat(
            self, key: str, expect_current: bool, other: float | None, new: float, ttl: int
        ) -> None:
            current = self.run(self.reference.get_tat(key))
            expected = current if expect_current else other
            expires_at = self.now.timestamp() + ttl
            self.call("compare_and_set_tat", key, expected, new, expires_at=expires_at)

        @rule(seconds=st.sampled_from(_STEPS))
        def advance(self, seconds: int) -> None:
            self.now += timedelta(seconds=seconds)

        @rule()
        def cleanup(self) -> None:
            self.call("cleanup", self.now)

        @invariant()
        def counters_agree(self) -> None:
            self.call("usage", [*_COUNTERS])

        @invariant()
        def rate_state_agrees(self) -> None:
            for key in _RATE_KEYS:
                self.call("get_tat", key)

        @invariant()
        def revocations_agree(self) -> None:
            for token_id in _TOKENS:
                self.call("is_revoked", token_id)

    return UsageStoreAgreement


# --- Catalog --------------------------------------------------------------------------------

_ORGS = ("o1", "o2")
_USERS = ("u1", "u2", "u3")
_DATASETS = ("d0", "d1", "d2")
_SLUGS = ("alpha", "beta")
_GRANTS = ("g0", "g1", "g2")
_TIMES = (0, 60, 120)
_NOW = T0 + timedelta(seconds=90)
_EXPIRIES = (None, 30, 3600)
_TAGS = ("rain", "roads", "money")


def _rarely(values: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    # Mostly no filter, so that listings show enough to disagree about.
    return st.one_of(st.just(None), st.just(None), st.just(None), values)


def catalog_agreement(
    make_reference: Callable[[], Catalog | Awaitable[Catalog]],
    make_candidate: Callable[[], Catalog | Awaitable[Catalog]],
) -> type[RuleBasedStateMachine]:
    """A state machine class that checks two Catalogs agree on datasets, grants and listings.

    Both start with organisations ``o1``, ``o2`` and users ``u1`` to ``u3``; the rules add,
    change, delete and purge datasets, add versions, grant and revoke access, change
    memberships, and compare every lookup and listing page. Factories and teardown as
    for ``usage_store_agreement``.
    """

    class CatalogAgreement(_Agreement[Catalog]):
        """Two Catalogs, the same operations, equal answers."""

        def make_reference(self) -> Catalog | Awaitable[Catalog]:
            return make_reference()

        def make_candidate(self) -> Catalog | Awaitable[Catalog]:
            return make_candidate()

        def __init__(self) -> None:
            super().__init__()
            for org_id in _ORGS:
                self.call("add_organization", organization(org_id))
            for user_id in _USERS:
                self.call("add_user", user(user_id))

        @initialize()
        def publish_two(self) -> None:
            for ds in (
                dataset("d0", organization_id="o1", owner_id="u1", slug="alpha"),
                dataset(
                    "d1",
                    organization_id="o2",
                    owner_id="u2",
                    slug="alpha",
                    visibility=Visibility.PRIVATE,
                    created_at=T0 + timedelta(seconds=_TIMES[1]),
                ),
            ):
                self.call("add_dataset", ds, version_of(ds))

        def _current(self, dataset_id: str) -> Dataset | None:
            found = self.run(_outcome(self.reference.get_dataset(dataset_id)))
            return None if isinstance(found, Raised) else found

        @rule(
            dataset_id=st.sampled_from(_DATASETS),
            org_id=st.sampled_from(_ORGS),
            owner_id=st.sampled_from(_USERS),
            slug=st.sampled_from(_SLUGS),
            visibility=st.sampled_from(Visibility),
            created=st.sampled_from(_TIMES),
            tags=st.lists(st.sampled_from(_TAGS), max_size=2, unique=True),
        )
        def add_dataset(
            self,
            dataset_id: str,
            org_id: str,
            owner_id: str,
            slug: str,
            visibility: Visibility,
            created: int,
            tags: list[str],
        ) -> None:
            ds = dataset(
                dataset_id,
                organization_id=org_id,
                owner_id=owner_id,
                slug=slug,
                visibility=visibility,
                created_at=T0 + timedelta(seconds=created),
                tags=tags,
                title=f"{slug} {dataset_id}",
            )
            self.call("add_dataset", ds, version_of(ds))

        @rule(
            dataset_id=st.sampled_from(_DATASETS),
            slug=st.one_of(st.none(), st.sampled_from(_SLUGS)),
            visibility=st.one_of(st.none(), st.sampled_from(Visibility)),
            deleted=st.one_of(st.none(), st.booleans()),
        )
        def update_dataset(
            self,
            dataset_id: str,
            slug: str | None,
            visibility: Visibility | None,
            deleted: bool | None,
        ) -> None:
            current = self._current(dataset_id) or dataset(
                dataset_id, organization_id="o1", owner_id="u1"
            )
            changed = attrs.evolve(
                current,
                slug=slug or current.slug,
                visibility=visibility or current.visibility,
                deleted_at=current.deleted_at if deleted is None else (_NOW if deleted else None),
            )
            self.call("update_dataset", changed)

        @rule(dataset_id=st.sampled_from(_DATASETS), number=st.integers(1, 3))
        def add_version(self, dataset_id: str, number: int) -> None:
            current = self._current(dataset_id) or dataset(
                dataset_id, organization_id="o1", owner_id="u1"
            )
            new = attrs.evolve(current, version=number)
            self.call("add_version", new, version_of(new, number))

        @rule(dataset_id=st.sampled_from(_DATASETS))
        def increment_download_count(self, dataset_id: str) -> None:
            self.call("increment_download_count", dataset_id)

        @rule(dataset_id=st.sampled_from(_DATASETS))
        def purge_dataset(self, dataset_id: str) -> None:
            self.call("purge_dataset", dataset_id)

        @rule(
            grant_id=st.sampled_from(_GRANTS),
            dataset_id=st.sampled_from(_DATASETS),
            to_user=st.booleans(),
            index=st.integers(0, 2),
            expires=st.sampled_from(_EXPIRIES),
            created=st.sampled_from(_TIMES),
        )
        def add_grant(
            self,
            grant_id: str,
            dataset_id: str,
            to_user: bool,
            index: int,
            expires: int | None,
            created: int,
        ) -> None:
            g = grant(
                grant_id,
                dataset_id,
                user_id=_USERS[index] if to_user else None,
                organization_id=None if to_user else _ORGS[index % len(_ORGS)],
                created_at=T0 + timedelta(seconds=created),
                expires_at=None if expires is None else T0 + timedelta(seconds=expires),
            )
            self.call("add_grant", g)

        @rule(dataset_id=st.sampled_from(_DATASETS), grant_id=st.sampled_from(_GRANTS))
        def delete_grant(self, dataset_id: str, grant_id: str) -> None:
            self.call("delete_grant", dataset_id, grant_id)

        @rule(
            org_id=st.sampled_from(_ORGS),
            user_id=st.sampled_from(_USERS),
            role=st.one_of(st.none(), st.sampled_from(Role)),
        )
        def change_membership(self, org_id: str, user_id: str, role: Role | None) -> None:
            if role is None:
                self.call("remove_membership", org_id, user_id)
            else:
                self.call("set_membership", org_id, user_id, role)

        @rule(
            who=st.sampled_from((None, *_USERS)),
            now=st.sampled_from((None, _NOW)),
            text=_rarely(st.sampled_from(("ALPHA", "d1", "rain", "zzz"))),
            org_id=_rarely(st.sampled_from(_ORGS)),
            tag=_rarely(st.sampled_from(_TAGS)),
            visibility=_rarely(st.sampled_from(Visibility)),
            limit=st.integers(1, 4),
        )
        def list_datasets(
            self,
            who: str | None,
            now: datetime | None,
            text: str | None,
            org_id: str | None,
            tag: str | None,
            visibility: Visibility | None,
            limit: int,
        ) -> None:
            query = DatasetQuery(
                audience=self._audience(who, now),
                text=text,
                organization_id=org_id,
                tag=tag,
                visibility=visibility,
                limit=limit,
            )
            seen: set[str] = set()
            while True:
                page = self.call("list_datasets", query)
                assert isinstance(page, list)
                ids = {d.id for d in page}
                assert not ids & seen, "a page repeats a dataset"
                seen |= ids
                if len(page) < limit:
                    break
                query = attrs.evolve(query, after=(page[-1].created_at, page[-1].id))

        def _audience(self, who: str | None, now: datetime | None) -> Audience:
            if who is None:
                return Audience(user_id=None, now=now)
            memberships = self.run(self.reference.memberships_of(who))
            return audience_for(Principal.for_user(who, memberships), now)

        @rule(
            dataset_id=st.sampled_from(_DATASETS),
            require_token=st.one_of(st.none(), st.booleans()),
        )
        def set_dataset_policy(self, dataset_id: str, require_token: bool | None) -> None:
            policy = None if require_token is None else PolicyOverride(require_token=require_token)
            self.call("set_dataset_policy", dataset_id, policy)

        @rule(org_id=st.sampled_from(_ORGS), slug=st.sampled_from(_SLUGS))
        def find_dataset(self, org_id: str, slug: str) -> None:
            self.call("find_dataset", org_id, slug)

        @invariant()
        def listings_agree(self) -> None:
            for who in (None, *_USERS):
                for now in (None, _NOW):
                    self.call("list_datasets", DatasetQuery(self._audience(who, now), limit=50))
            for org_id in _ORGS:
                for slug in _SLUGS:
                    self.call("find_dataset", org_id, slug)

        @invariant()
        def datasets_agree(self) -> None:
            for dataset_id in _DATASETS:
                self.call("get_dataset", dataset_id)
                self.call("list_versions", dataset_id)
                self.call("list_grants", dataset_id)
                self.call("get_dataset_policy", dataset_id)
            self.both(lambda c: _sorted_ids(c.list_deleted_datasets()))
            for user_id in _USERS:
                self.call("memberships_of", user_id)

    return CatalogAgreement


async def _sorted_ids(datasets: Awaitable[Sequence[Dataset]]) -> list[str]:
    return sorted(d.id for d in await datasets)
