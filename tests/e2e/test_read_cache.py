"""The web layer's read cache: what it keeps, and that this server's own changes show at once."""

from __future__ import annotations

from typing import Any

from datadl.domain.access import Principal
from datadl.domain.model import Visibility
from datadl.entrypoints.web.cache import ReadCache
from tests.e2e.conftest import Server

API = "/api/v1"


async def _get(srv: Server, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with srv.http.get(f"{srv.url}{API}{path}", headers=headers) as response:
        return response.status, await response.json()


def test_entries_expire_after_the_ttl() -> None:
    """A verified key and a rendered dataset are reused within the TTL and not after it."""
    now = [100.0]
    cache = ReadCache(5.0, clock=lambda: now[0])
    who = Principal(user_id="u1", api_key_id="k1")
    cache.remember_principal("ddl_secret", who)
    cache.remember_dataset("d1", who, b"{}")
    now[0] += 4.9
    assert cache.principal("ddl_secret") == who and cache.dataset("d1", who) == b"{}"
    assert cache.principal("ddl_other") is None and cache.dataset("d1", Principal(None)) is None
    now[0] += 0.2
    assert cache.principal("ddl_secret") is None and cache.dataset("d1", who) is None


async def test_a_change_through_the_api_shows_at_once(srv: Server) -> None:
    """A PATCH clears the cache: the next GET renders the new title."""
    dataset = await srv.publish("olivia", b"a,b\n1,2\n", visibility=Visibility.ORGANIZATION)
    auth = srv.auth("olivia")
    assert (await _get(srv, f"/datasets/{dataset.id}", auth))[1]["title"] != "Renamed"
    async with srv.http.patch(
        f"{srv.url}{API}/datasets/{dataset.id}", json={"title": "Renamed"}, headers=auth
    ) as response:
        assert response.status == 200
    assert (await _get(srv, f"/datasets/{dataset.id}", auth))[1]["title"] == "Renamed"


async def test_a_download_refreshes_the_download_count(srv: Server) -> None:
    """The dataset a download touched is rendered again, with its new download_count."""
    dataset = await srv.publish("olivia", b"a,b\n1,2\n", visibility=Visibility.ORGANIZATION)
    auth = srv.auth("olivia")
    before = (await _get(srv, f"/datasets/{dataset.id}", auth))[1]["download_count"]
    async with srv.http.get(srv.download_url(dataset), headers=auth) as response:
        assert response.status == 200
        await response.read()
    after = (await _get(srv, f"/datasets/{dataset.id}", auth))[1]["download_count"]
    assert after == before + 1


async def test_a_revoked_key_is_refused_at_once(srv: Server) -> None:
    """A key verified a moment ago is refused right after its revocation."""
    async with srv.http.post(
        f"{srv.url}{API}/me/api-keys", json={"name": "short-lived"}, headers=srv.auth("olivia")
    ) as response:
        assert response.status == 201
        created = await response.json()
    key_auth = {"Authorization": f"Bearer {created['key']}"}
    assert (await _get(srv, "/me", key_auth))[0] == 200
    async with srv.http.delete(
        f"{srv.url}{API}/me/api-keys/{created['id']}", headers=srv.auth("olivia")
    ) as response:
        assert response.status == 204
    assert (await _get(srv, "/me", key_auth))[0] == 401
