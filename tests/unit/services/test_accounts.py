"""API keys and authentication through the account service."""

from __future__ import annotations

import pytest

from datadl.domain.access import CredentialKind
from datadl.domain.errors import DatadlError
from datadl.domain.model import Scope
from tests.conftest import World


async def test_key_is_shown_once_and_stored_hashed(world: World) -> None:
    """The plaintext authenticates; the catalogue holds only a hash of it."""
    created = await world.app.accounts.create_api_key(world.member, "ci", ["read", "download"])
    stored = await world.app.catalog.get_api_key(created.key.id)
    assert created.plaintext.split("_", 2)[2] not in stored.secret_hash
    assert created.plaintext not in repr(created) and created.plaintext not in repr(stored)
    principal = await world.app.accounts.authenticate_api_key(created.plaintext)
    assert principal.user_id == world.member.user_id
    assert principal.credential is CredentialKind.API_KEY
    assert principal.scopes == frozenset({Scope.READ, Scope.DOWNLOAD})


@pytest.mark.parametrize(
    "mangle", [lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), lambda k: "x" + k, lambda k: ""]
)
async def test_wrong_keys_are_refused_alike(world: World, mangle) -> None:  # type: ignore[no-untyped-def]
    """Any altered or malformed key gets the same auth_required answer."""
    created = await world.app.accounts.create_api_key(world.member, "ci")
    with pytest.raises(DatadlError) as caught:
        await world.app.accounts.authenticate_api_key(mangle(created.plaintext))
    assert caught.value.code == "auth_required"
    assert caught.value.message == "The API key is not valid."


async def test_revoked_and_expired_keys_stop_working(world: World) -> None:
    """A revoked key and a key past its expiry both fail to authenticate."""
    revoked = await world.app.accounts.create_api_key(world.member, "a")
    expiring = await world.app.accounts.create_api_key(world.member, "b", expires_in=60)
    await world.app.accounts.revoke_api_key(world.member, revoked.key.id)
    world.clock.advance(60)
    for key in (revoked, expiring):
        with pytest.raises(DatadlError):
            await world.app.accounts.authenticate_api_key(key.plaintext)


async def test_keys_cannot_escalate_scopes(world: World) -> None:
    """A read-only key cannot mint a key with more scopes."""
    created = await world.app.accounts.create_api_key(world.member, "ro", ["read"])
    principal = await world.app.accounts.authenticate_api_key(created.plaintext)
    with pytest.raises(DatadlError) as caught:
        await world.app.accounts.create_api_key(principal, "rw", ["read", "publish"])
    assert caught.value.code == "forbidden"


async def test_users_revoke_only_their_own_keys(world: World) -> None:
    """Revoking someone else's key is not_found."""
    created = await world.app.accounts.create_api_key(world.member, "mine")
    with pytest.raises(DatadlError) as caught:
        await world.app.accounts.revoke_api_key(world.outsider, created.key.id)
    assert caught.value.code == "not_found"


async def test_remove_member_ends_the_membership(world: World) -> None:
    """A removed member no longer belongs to the organisation; a second removal is not_found."""
    await world.app.accounts.remove_member("acme", "mark")
    assert (await world.app.accounts.principal_for("mark")).memberships == ()
    with pytest.raises(DatadlError) as caught:
        await world.app.accounts.remove_member("acme", "mark")
    assert caught.value.code == "not_found"
    assert "not a member" in caught.value.message


async def test_remove_member_refuses_the_last_admin(world: World) -> None:
    """The only admin stays until another member is made admin."""
    with pytest.raises(DatadlError) as caught:
        await world.app.accounts.remove_member("acme", "ada")
    assert caught.value.code == "conflict"
    assert "admin" in caught.value.hint
    await world.app.accounts.add_member("acme", "olivia", "admin")
    await world.app.accounts.remove_member("acme", "ada")
    assert (await world.app.accounts.principal_for("ada")).memberships == ()


async def test_remove_member_of_unknown_organisation_or_user_is_not_found(world: World) -> None:
    """Unknown organisations and users are not_found, as for add_member."""
    for org, user in (("nowhere", "mark"), ("acme", "nobody"), ("other", "mark")):
        with pytest.raises(DatadlError) as caught:
            await world.app.accounts.remove_member(org, user)
        assert caught.value.code == "not_found"
