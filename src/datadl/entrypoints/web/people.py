"""The principal, its quota and API keys; organisation policies; history and analytics."""

from __future__ import annotations

from aiohttp import web

from datadl.domain.accounting import DownloadStatus
from datadl.domain.errors import BadRequest
from datadl.domain.model import Scope
from datadl.entrypoints.web.auth import principal_of
from datadl.entrypoints.web.cache import READ_CACHE
from datadl.entrypoints.web.config import DATADL
from datadl.entrypoints.web.datasets import _limit
from datadl.entrypoints.web.render import (
    API,
    analytics_json,
    api_key_json,
    json_response,
    me_json,
    only_keys,
    policy_from,
    policy_json,
    quota_json,
    read_json,
    record_json,
    rfc3339,
    typed,
)


async def me(request: web.Request) -> web.Response:
    """GET /api/v1/me."""
    app = request.app[DATADL]
    return json_response(me_json(await app.accounts.me(await principal_of(request))))


async def my_quota(request: web.Request) -> web.Response:
    """GET /api/v1/me/quota."""
    app = request.app[DATADL]
    statuses = await app.audit.quota(await principal_of(request), request.remote)
    return json_response(quota_json(statuses))


async def create_api_key(request: web.Request) -> web.Response:
    """POST /api/v1/me/api-keys: the key itself appears here, once."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    body = await read_json(request)
    only_keys(body, ("name", "scopes", "expires_in"))
    scopes = typed(body, "scopes", list)
    if scopes is not None and not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings.", hint='Use ["read", "download"].')
    created = await app.accounts.create_api_key(
        principal,
        typed(body, "name", str, null=False),
        (Scope.READ, Scope.DOWNLOAD) if scopes is None else scopes,
        expires_in=typed(body, "expires_in", int),
    )
    return json_response(
        {**api_key_json(created.key), "key": created.plaintext},
        status=201,
        headers={"Location": f"{API}/me/api-keys/{created.key.id}", "Cache-Control": "no-store"},
    )


async def list_api_keys(request: web.Request) -> web.Response:
    """GET /api/v1/me/api-keys."""
    app = request.app[DATADL]
    keys = await app.accounts.list_api_keys(await principal_of(request))
    return json_response({"items": [api_key_json(k) for k in keys]})


async def revoke_api_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/me/api-keys/{key_id}."""
    app = request.app[DATADL]
    await app.accounts.revoke_api_key(await principal_of(request), request.match_info["key_id"])
    request.app[READ_CACHE].forget_key(request.match_info["key_id"])
    return web.Response(status=204)


async def get_org_policy(request: web.Request) -> web.Response:
    """GET /api/v1/organizations/{org}/download-policy."""
    app = request.app[DATADL]
    policy = await app.datasets.organization_policy(
        await principal_of(request), request.match_info["org"]
    )
    return json_response(policy_json(policy))


async def set_org_policy(request: web.Request) -> web.Response:
    """PUT /api/v1/organizations/{org}/download-policy."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    policy = policy_from(await read_json(request))
    saved = await app.datasets.set_organization_policy(principal, request.match_info["org"], policy)
    return json_response(policy_json(saved))


async def download_history(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/download-history."""
    app = request.app[DATADL]
    raw = request.query.get("status")
    try:
        status = DownloadStatus(raw) if raw else None
    except ValueError:
        raise BadRequest(
            f"Unknown status {raw!r}.",
            hint="Use one of: " + ", ".join(s.value for s in DownloadStatus) + ".",
        ) from None
    page = await app.audit.history(
        await principal_of(request),
        request.match_info["dataset_id"],
        limit=_limit(request, 50),
        cursor=request.query.get("cursor") or None,
        status=status,
    )
    return json_response(
        {
            "items": [record_json(r, detailed=True) for r in page.items],
            "next_cursor": page.next_cursor,
        }
    )


async def analytics(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/analytics?days=30."""
    app = request.app[DATADL]
    raw = request.query.get("days", "30")
    if not raw.isdigit() or len(raw) > 4:
        raise BadRequest("days must be a positive integer.", hint="Use ?days=30.")
    result = await app.audit.analytics(
        await principal_of(request), request.match_info["dataset_id"], days=int(raw)
    )
    body = analytics_json(result)
    body["generated_at"] = rfc3339(app.clock.now())
    return json_response(body)
