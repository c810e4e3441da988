"""Download tokens through the services: issue, use per session, expire, revoke."""

from __future__ import annotations

import pytest

from datadl.domain.access import Principal
from datadl.domain.errors import DatadlError
from datadl.domain.model import Visibility
from datadl.domain.policy import DownloadPolicy
from datadl.services.datasets import DatasetChanges
from datadl.services.downloads import ClientInfo, DownloadAsk
from tests.conftest import World
from tests.unit.services.test_downloads import ROWS, code_of, fetch, publish

ANON = Principal.anonymous()


async def test_token_lets_anyone_download_exactly_what_it_names(world: World) -> None:
    """A token alone downloads its dataset, version and format; nothing else."""
    dataset = await publish(world, visibility=Visibility.PRIVATE)
    other = await publish(world, slug="other", visibility=Visibility.PRIVATE)
    issued = await world.app.tokens.issue(world.owner, dataset.id, max_uses=None)
    status, body, _ = await fetch(world, ANON, DownloadAsk(dataset.id, token=issued.token))
    assert (status, body) == (200, ROWS)
    wrong = DownloadAsk(other.id, token=issued.token)
    assert await code_of(world, ANON, wrong) == "token_invalid"
    wrong_format = DownloadAsk(dataset.id, token=issued.token, format="csv")
    assert await code_of(world, ANON, wrong_format) == "token_invalid"


async def test_tampered_and_expired_tokens_have_their_own_codes(world: World) -> None:
    """A changed token is token_invalid; an outdated one token_expired."""
    dataset = await publish(world)
    issued = await world.app.tokens.issue(world.owner, dataset.id, expires_in=60)
    flipped = issued.token[:-2] + ("A" if issued.token[-2] != "A" else "B") + issued.token[-1]
    assert await code_of(world, ANON, DownloadAsk(dataset.id, token=flipped)) == "token_invalid"
    world.clock.advance(60)
    assert (
        await code_of(world, ANON, DownloadAsk(dataset.id, token=issued.token)) == "token_expired"
    )


async def test_token_counts_uses_per_session_not_per_request(world: World) -> None:
    """Resuming within a session reuses the one allowed use; a new session is refused."""
    dataset = await publish(world)
    issued = await world.app.tokens.issue(world.owner, dataset.id, max_uses=1, expires_in=86_400)
    client = ClientInfo("10.0.0.1", "curl")
    await fetch(
        world, ANON, DownloadAsk(dataset.id, token=issued.token, range="bytes=0-9", client=client)
    )
    world.clock.advance(30)
    _, rest, _ = await fetch(
        world, ANON, DownloadAsk(dataset.id, token=issued.token, range="bytes=10-", client=client)
    )
    assert rest == ROWS[10:]
    world.clock.advance(3600)
    ask = DownloadAsk(dataset.id, token=issued.token, client=client)
    assert await code_of(world, ANON, ask) == "token_exhausted"


async def test_revoked_token_is_refused_and_only_allowed_people_revoke(world: World) -> None:
    """The issuer may revoke a token; an outsider learns nothing; a revoked token fails."""
    dataset = await publish(world)
    issued = await world.app.tokens.issue(world.member, dataset.id, max_uses=None)
    with pytest.raises(DatadlError) as caught:
        await world.app.tokens.revoke(world.outsider, issued.claims.token_id)
    assert caught.value.code == "not_found"
    await world.app.tokens.revoke(world.member, issued.claims.token_id)
    assert (
        await code_of(world, ANON, DownloadAsk(dataset.id, token=issued.token)) == "token_invalid"
    )


async def test_token_lifetime_is_capped_by_policy(world: World) -> None:
    """Asking for a longer lifetime than the policy allows gives the policy's cap."""
    dataset = await publish(world)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(token_max_ttl_seconds=600)
    )
    issued = await world.app.tokens.issue(world.owner, dataset.id, expires_in=86_400)
    assert (issued.claims.expires_at - issued.claims.issued_at).total_seconds() == 600


async def test_required_token_and_terms(world: World) -> None:
    """With require_token a member must get a token, accepting the terms to get one."""
    dataset = await publish(world)
    await world.app.datasets.set_organization_policy(
        world.admin, "acme", DownloadPolicy(require_token=True, terms="No resale.")
    )
    assert await code_of(world, world.member, DownloadAsk(dataset.id)) == "token_required"
    with pytest.raises(DatadlError) as caught:
        await world.app.tokens.issue(world.member, dataset.id)
    assert caught.value.code == "terms_not_accepted"
    issued = await world.app.tokens.issue(world.member, dataset.id, accept_terms=True)
    status, _, _ = await fetch(world, ANON, DownloadAsk(dataset.id, token=issued.token))
    assert status == 200


async def test_no_token_for_a_hidden_dataset(world: World) -> None:
    """Asking a token for a dataset one cannot see is not_found."""
    dataset = await publish(world, visibility=Visibility.PRIVATE)
    with pytest.raises(DatadlError) as caught:
        await world.app.tokens.issue(world.outsider, dataset.id)
    assert caught.value.code == "not_found"


async def test_token_of_an_issuer_who_lost_access_stops_working(world: World) -> None:
    """A token checks its issuer's access on every use."""
    dataset = await publish(world)
    issued = await world.app.tokens.issue(world.member, dataset.id, max_uses=None)
    await world.app.datasets.update(
        world.owner, dataset.id, DatasetChanges(visibility=Visibility.PRIVATE)
    )
    assert (
        await code_of(world, ANON, DownloadAsk(dataset.id, token=issued.token)) == "token_invalid"
    )
