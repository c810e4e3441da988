"""Preview and metadata, answered by the insight service when the server has one."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web

from datadl.domain.access import Principal
from datadl.domain.errors import BadRequest, DatadlError
from datadl.domain.tables import Page, TableProfile
from datadl.entrypoints.web.auth import principal_of
from datadl.entrypoints.web.config import DATADL, METRICS
from datadl.entrypoints.web.render import json_response, page_json, profile_json

MAX_PREVIEW_ROWS = 1000


class Insight(Protocol):
    """What the web layer needs of ``Datadl.insight``."""

    async def metadata(
        self, principal: Principal, dataset_id: str, *, version: int | None = None
    ) -> TableProfile: ...

    async def preview(
        self,
        principal: Principal,
        dataset_id: str,
        *,
        offset: int = 0,
        limit: int = 50,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> Page: ...


class InsightUnavailable(DatadlError):
    """This server was started without the table insight service."""

    code = "insight_unavailable"
    title = "Insight unavailable"
    default_hint = "Download the dataset instead, or ask an operator to enable analysis."


def _insight(request: web.Request) -> Insight:
    found: Any = getattr(request.app[DATADL], "insight", None)
    if found is None:
        raise InsightUnavailable("Previews and metadata are not available on this server.")
    return found  # type: ignore[no-any-return]


def _int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest(f"{name} must be a non-negative integer.", hint=f"Check ?{name}=.")
    return int(raw)


async def preview(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/preview."""
    insight = _insight(request)
    offset = _int(request, "offset", 0) or 0
    limit = _int(request, "limit", 50)
    if limit is None or not 1 <= limit <= MAX_PREVIEW_ROWS:
        raise BadRequest(f"limit must be between 1 and {MAX_PREVIEW_ROWS}.", hint="Use ?limit=50.")
    raw_columns = request.query.get("columns")
    columns = [c for c in raw_columns.split(",") if c] if raw_columns else None
    started = time.monotonic()
    page = await insight.preview(
        await principal_of(request),
        request.match_info["dataset_id"],
        offset=offset,
        limit=limit,
        columns=columns,
        version=_int(request, "version", None),
    )
    request.app[METRICS].analysis_seconds.labels(kind="preview").observe(time.monotonic() - started)
    return json_response(page_json(page))


async def metadata(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/metadata; 202 with Retry-After while the analysis runs."""
    insight = _insight(request)
    started = time.monotonic()
    try:
        profile = await insight.metadata(
            await principal_of(request),
            request.match_info["dataset_id"],
            version=_int(request, "version", None),
        )
    except DatadlError as error:
        if error.code != "analysis_pending":
            raise
        wait = max(1, int(error.retry_after or 5))
        return json_response(
            {
                "status": "analyzing",
                "code": "analysis_pending",
                "detail": error.message,
                "retry_after": wait,
            },
            status=202,
            headers={"Retry-After": str(wait)},
        )
    request.app[METRICS].analysis_seconds.labels(kind="metadata").observe(
        time.monotonic() - started
    )
    return json_response(profile_json(profile))
