"""Shared fixtures: a core wired on memory adapters with a clock the test controls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import attrs
import pytest

import datadl
from datadl.adapters.system import FixedClock, StaticKeyRing
from datadl.domain.access import Principal
from datadl.domain.model import Role
from datadl.domain.tokens import SigningKey

START = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """Stream ``data`` in pieces, as an upload arrives."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@attrs.define
class World:
    """A core with an organisation, an owner, a member, an outsider and an admin."""

    app: datadl.Datadl
    clock: FixedClock
    owner: Principal
    member: Principal
    outsider: Principal
    admin: Principal
    org_slug: str


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
async def world(clock: FixedClock) -> World:
    keys = StaticKeyRing([SigningKey("k1", b"s" * 32)], b"c" * 32)
    app = datadl.bootstrap(clock=clock, keys=keys)
    await app.accounts.create_organization("acme", "Acme Research")
    await app.accounts.create_organization("other")
    for name in ("olivia", "mark", "oscar", "ada"):
        await app.accounts.create_user(name)
    await app.accounts.add_member("acme", "olivia", Role.MEMBER)
    await app.accounts.add_member("acme", "mark", Role.MEMBER)
    await app.accounts.add_member("acme", "ada", Role.ADMIN)
    await app.accounts.add_member("other", "oscar", Role.MEMBER)
    return World(
        app=app,
        clock=clock,
        owner=await app.accounts.principal_for("olivia"),
        member=await app.accounts.principal_for("mark"),
        outsider=await app.accounts.principal_for("oscar"),
        admin=await app.accounts.principal_for("ada"),
        org_slug="acme",
    )
