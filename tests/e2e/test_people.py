"""The principal, quotas, API keys, organisation policies, history and analytics."""

from __future__ import annotations

from typing import Any

from datadl.domain.model import Visibility
from tests.e2e.conftest import PENGUINS, Server


async def call(
    srv: Server, method: str, path: str, who: str | None = "mark", **kwargs: Any
) -> tuple[int, Any]:
    headers = srv.auth(who) if who else {}
    async with srv.http.request(method, srv.url + path, headers=headers, **kwargs) as response:
        if response.status == 204:
            return 204, None
        return response.status, await response.json(content_type=None)


async def test_me_names_the_user_organisations_and_roles(srv: Server) -> None:
    """GET /me shows the user, the credential and each organisation with its role."""
    status, body = await call(srv, "GET", "/api/v1/me", "ada")
    assert status == 200
    assert body["user"]["name"] == "ada"
    assert body["credential"] == "api_key"
    assert [(o["slug"], o["role"]) for o in body["organizations"]] == [("acme", "admin")]
    status, body = await call(srv, "GET", "/api/v1/me", None)
    assert (status, body["user"], body["credential"]) == (200, None, "anonymous")


async def test_api_key_is_shown_once_works_and_can_be_revoked(srv: Server) -> None:
    """A new key appears once in the 201, authenticates, is listed without secret, revokes."""
    status, created = await call(
        srv, "POST", "/api/v1/me/api-keys", json={"name": "ci", "scopes": ["read"]}
    )
    assert status == 201
    key = created["key"]
    assert key.startswith("ddl_")
    status, listed = await call(srv, "GET", "/api/v1/me/api-keys")
    assert created["id"] in [k["id"] for k in listed["items"]]
    assert key not in str(listed)
    async with srv.http.get(
        f"{srv.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert (await response.json())["scopes"] == ["read"]
    async with srv.http.get(
        srv.download_url(srv.penguins), headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 403
    status, _ = await call(srv, "DELETE", f"/api/v1/me/api-keys/{created['id']}")
    assert status == 204
    async with srv.http.get(
        f"{srv.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 401


async def test_read_only_key_cannot_publish_or_mint_wider_keys(srv: Server) -> None:
    """Scopes are enforced: a read key cannot publish nor create a key with more scopes."""
    _, created = await call(
        srv, "POST", "/api/v1/me/api-keys", json={"name": "ro", "scopes": ["read"]}
    )
    headers = {"Authorization": f"Bearer {created['key']}"}
    async with srv.http.post(
        f"{srv.url}/api/v1/datasets?organization=acme", data=PENGUINS, headers=headers
    ) as response:
        assert response.status == 403
    async with srv.http.post(
        f"{srv.url}/api/v1/me/api-keys",
        json={"name": "wide", "scopes": ["admin"]},
        headers=headers,
    ) as response:
        assert response.status == 403


async def test_org_policy_read_by_members_changed_by_admins(srv: Server) -> None:
    """Members read the policy, admins replace it, outsiders get 404."""
    path = "/api/v1/organizations/acme/download-policy"
    status, body = await call(srv, "GET", path)
    assert status == 200
    assert body["allow_anonymous"] is True
    assert set(body) >= {"allowed_formats", "rate_limit", "quota", "terms"}
    status, body = await call(srv, "PUT", path, json={"allowed_formats": ["csv"]})
    assert (status, body["code"]) == (403, "forbidden")
    policy = {
        "allowed_formats": ["csv", "parquet"],
        "max_download_bytes": 10_000_000_000,
        "allow_anonymous": False,
        "require_token": False,
        "token_max_ttl_seconds": 86400,
        "terms": None,
        "rate_limit": {"requests": 60, "per_seconds": 60},
        "quota": {
            "user": {"bytes": 10_000_000_000, "downloads": 1000, "window": "day"},
            "organization": {"bytes": None, "downloads": None, "window": "month"},
        },
        "audit_retention_days": 365,
        "neutralize_formulas": True,
    }
    status, body = await call(srv, "PUT", path, "ada", json=policy)
    assert status == 200
    assert body == policy
    status, body = await call(srv, "GET", path, "oscar")
    assert status == 404
    status, body = await call(srv, "PUT", path, "ada", json={"allowed_formats": ["exe"]})
    assert status == 400


async def test_quota_shows_usage_limits_and_reset(srv: Server) -> None:
    """GET /me/quota reports bytes used against the user quota and when it resets."""
    await call(
        srv, "PUT", "/api/v1/organizations/acme/download-policy", "ada",
        json={"quota": {"user": {"bytes": 1_000_000, "downloads": 10, "window": "day"}}},
    )  # fmt: skip
    async with srv.http.get(srv.download_url(srv.penguins), headers=srv.auth("mark")) as r:
        await r.read()
    status, body = await call(srv, "GET", "/api/v1/me/quota")
    assert status == 200
    (user,) = [q for q in body["quotas"] if q["subject"] == "user"]
    assert user["used"] == {"bytes": len(PENGUINS), "downloads": 1}
    assert user["remaining"]["bytes"] == 1_000_000 - len(PENGUINS)
    assert user["resets_at"] == "2026-11-26T00:00:00Z"


async def test_history_and_analytics_for_owners_only(srv: Server) -> None:
    """The owner sees records newest first and analytics; a member gets 403."""
    for _ in range(2):
        async with srv.http.get(srv.download_url(srv.penguins), headers=srv.auth("mark")) as r:
            await r.read()
    await call(srv, "GET", f"/api/v1/datasets/{srv.penguins.id}/download?format=nope")
    path = f"/api/v1/datasets/{srv.penguins.id}"
    status, body = await call(srv, "GET", path + "/download-history", "mark")
    assert (status, body["code"]) == (403, "forbidden")
    status, body = await call(srv, "GET", path + "/download-history?limit=1", "olivia")
    assert status == 200
    assert len(body["items"]) == 1 and body["next_cursor"]
    status, body = await call(srv, "GET", path + "/download-history?status=completed", "olivia")
    assert [r["status"] for r in body["items"]] == ["completed", "completed"]
    status, body = await call(srv, "GET", path + "/analytics?days=7", "olivia")
    assert status == 200
    assert body["totals"]["bytes"] == 2 * len(PENGUINS)
    assert body["totals"]["unique_downloaders"] == 1
    assert len(body["per_day"]) == 7
    status, _ = await call(srv, "GET", path + "/analytics?days=abc", "olivia")
    assert status == 400


async def test_impossible_numbers_are_bad_requests_not_crashes(srv: Server) -> None:
    """Zero, negative, infinite or huge numbers in bodies answer 400, never 500."""
    path = "/api/v1/organizations/acme/download-policy"
    for body in (
        {"rate_limit": {"requests": 0, "per_seconds": 60}},
        {"rate_limit": {"requests": 1, "per_seconds": -1}},
        {"token_max_ttl_seconds": 0},
        {"max_download_bytes": 2**70},
        {"quota": {"user": {"bytes": -1}}},
        {"quota": {"user": {"window": "year"}}},
    ):
        status, answer = await call(srv, "PUT", path, "ada", json=body)
        assert (status, answer["code"]) == (400, "bad_request"), body
    status, answer = await call(
        srv, "POST", f"/api/v1/datasets/{srv.penguins.id}/download-token", json={"version": 2**70}
    )
    assert status == 400


async def test_a_policy_that_neutralizes_formulas_changes_csv_exports(srv: Server) -> None:
    """Cells a spreadsheet would run as formulas are exported as text once the policy says so."""
    risky = await srv.publish(
        "olivia",
        b'name,note\nalice,=HYPERLINK("http://x")\nbob,@SUM(A1)\n',
        filename="r.csv",
        visibility=Visibility.ORGANIZATION,
    )
    url = srv.download_url(risky) + "?format=tsv"
    async with srv.http.get(url, headers=srv.auth("mark")) as response:
        plain = await response.text()
    assert '\t"=HYPERLINK' in plain
    status, body = await call(
        srv, "PUT", "/api/v1/organizations/acme/download-policy", "ada",
        json={"neutralize_formulas": True},
    )  # fmt: skip
    assert (status, body["neutralize_formulas"]) == (200, True)
    async with srv.http.get(url, headers=srv.auth("mark")) as response:
        neutral = await response.text()
    assert response.status == 200
    assert "\t\"'=HYPERLINK" in neutral
    assert '\t"\'@SUM(A1)"' in neutral
