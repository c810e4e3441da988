"""The aiohttp application: routes, middlewares and background work over one ``Datadl``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import structlog
from aiohttp import web

from datadl.domain.errors import Unavailable
from datadl.domain.model import EXPORT_FORMATS
from datadl.entrypoints.web import datasets, downloads, insight, ops, people
from datadl.entrypoints.web.auth import derive_session_key
from datadl.entrypoints.web.cache import READ_CACHE, ReadCache, invalidate_middleware
from datadl.entrypoints.web.config import (
    CONFIG,
    DATADL,
    JSON_MAX_BYTES,
    METRICS,
    SESSION_KEY,
    WebConfig,
)
from datadl.entrypoints.web.errors import error_middleware
from datadl.entrypoints.web.metrics import Metrics
from datadl.entrypoints.web.openapi import build_document, docs_page, openapi_handler
from datadl.entrypoints.web.routing import Param, Route
from datadl.settings import Settings
from datadl.wiring import Datadl

log = structlog.get_logger()

#: Keyword arguments for ``web.AppRunner``/``web.run_app``: keep-alive bounded, header
#: sizes capped, and aiohttp's own access log off (the observe middleware logs instead).
RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "keepalive_timeout": 75.0,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "handler_cancellation": True,
}

_ID = Param("dataset_id", "path", description="The dataset id.")
_FORMAT = Param(
    "format", enum=EXPORT_FORMATS, description="Delivered format (default original).", example="csv"
)
_VERSION = Param(
    "version",
    type="integer",
    description="An older version number.",
    minimum=1,
    maximum=999_999_999,
)
_LIMIT = Param("limit", type="integer", minimum=1, maximum=100, example=20)
_CURSOR = Param("cursor")

_UPLOAD_PARAMS = (
    Param("format", enum=("csv", "tsv", "json", "jsonl", "parquet", "xlsx")),
    Param("slug"),
    Param("title"),
    Param("organization"),
    Param("visibility", enum=("private", "organization", "public")),
    Param("filename"),
    Param("description"),
    Param("tags", description="Comma-separated."),
    Param("license"),
)

_DOWNLOAD_RESPONSES = {
    "200": "The whole representation.",
    "206": "One range (Content-Range) or several (multipart/byteranges).",
    "304": "Not modified (If-None-Match, If-Modified-Since).",
    "410": "file_missing: the stored file is gone.",
    "412": "precondition_failed (If-Match, If-Unmodified-Since).",
    "415": "unsupported_format: unknown or unconvertible format.",
    "416": "range_not_satisfiable; Content-Range: bytes */size.",
    "422": "The conversion is impossible (e.g. more rows than an xlsx sheet holds).",
}


async def _docs(request: web.Request) -> web.Response:
    """GET /api/docs."""
    return web.Response(
        text=docs_page(build_document(ROUTES)), content_type="text/html", charset="utf-8"
    )


async def _openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json."""
    return openapi_handler(build_document(ROUTES))


def _r(method: str, path: str, handler: Any, summary: str, tag: str, **kw: Any) -> Route:
    return Route(method, path, handler, summary, tag, **kw)


D = "/api/v1/datasets"
ROUTES: tuple[Route, ...] = (
    _r(
        "POST",
        D,
        datasets.publish,
        "Publish a dataset (raw body or multipart).",
        "datasets",
        body="upload",
        params=_UPLOAD_PARAMS,
        returns="Dataset",
        responses={
            "201": "Published.",
            "409": "conflict: slug taken.",
            "413": "payload_too_large.",
            "415": "unsupported_format.",
        },
    ),
    _r(
        "GET",
        D,
        datasets.list_datasets,
        "List the datasets the principal may see.",
        "datasets",
        params=(
            Param("q"),
            Param("organization"),
            Param("tag"),
            Param("visibility", enum=("private", "organization", "public")),
            _LIMIT,
            _CURSOR,
        ),
        returns="DatasetList",
        responses={"200": "A page of datasets."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}",
        datasets.get_dataset,
        "One dataset.",
        "datasets",
        params=(_ID,),
        returns="Dataset",
        responses={"200": "The dataset."},
    ),
    _r(
        "PATCH",
        D + "/{dataset_id}",
        datasets.update_dataset,
        "Change a dataset.",
        "datasets",
        params=(_ID,),
        body="DatasetPatch",
        returns="Dataset",
        responses={"200": "Changed."},
    ),
    _r(
        "DELETE",
        D + "/{dataset_id}",
        datasets.delete_dataset,
        "Delete a dataset.",
        "datasets",
        params=(_ID,),
        responses={"204": "Deleted."},
    ),
    _r(
        "PUT",
        D + "/{dataset_id}/file",
        datasets.replace_file,
        "Replace the file: a new version.",
        "datasets",
        params=(_ID, *_UPLOAD_PARAMS[:1], Param("filename")),
        body="upload",
        returns="Dataset",
        responses={
            "200": "The dataset at its new version.",
            "409": "conflict.",
            "413": "payload_too_large.",
            "415": "unsupported_format.",
        },
    ),
    _r(
        "GET",
        D + "/{dataset_id}/versions",
        datasets.list_versions,
        "The versions.",
        "datasets",
        params=(_ID,),
        returns="VersionList",
        responses={"200": "Versions, oldest first."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/download",
        downloads.download,
        "Download (ranges, conditionals).",
        "downloads",
        params=(_ID, _FORMAT, _VERSION, Param("token"), Param("accept_terms")),
        responses=_DOWNLOAD_RESPONSES,
        extra={"download": True},
    ),
    _r(
        "HEAD",
        D + "/{dataset_id}/download",
        downloads.download,
        "Download headers only.",
        "downloads",
        params=(_ID, _FORMAT, _VERSION, Param("token"), Param("accept_terms")),
        responses=_DOWNLOAD_RESPONSES,
        extra={"download": True},
    ),
    _r(
        "POST",
        D + "/{dataset_id}/download-token",
        downloads.issue_token,
        "Issue a download token.",
        "downloads",
        params=(_ID,),
        body="TokenRequest",
        returns="DownloadToken",
        responses={"201": "The token and its URL.", "415": "unsupported_format."},
    ),
    _r(
        "DELETE",
        "/api/v1/download-tokens/{token_id}",
        downloads.revoke_token,
        "Revoke a download token.",
        "downloads",
        params=(Param("token_id", "path"),),
        responses={"204": "Revoked."},
    ),
    _r(
        "GET",
        "/api/v1/downloads/{download_id}",
        downloads.download_progress,
        "A download record with live progress.",
        "downloads",
        params=(Param("download_id", "path"),),
        returns="DownloadRecord",
        responses={"200": "The record."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/download-history",
        people.download_history,
        "The dataset's download records.",
        "downloads",
        params=(
            _ID,
            Param("limit", type="integer", minimum=1, maximum=200, example=50),
            _CURSOR,
            Param("status"),
        ),
        returns="DownloadHistory",
        responses={"200": "Newest first."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/analytics",
        people.analytics,
        "Download analytics.",
        "downloads",
        params=(_ID, Param("days", type="integer", minimum=1, maximum=366, example=30)),
        returns="Analytics",
        responses={"200": "Totals and series."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/preview",
        insight.preview,
        "A window of rows.",
        "insight",
        params=(
            _ID,
            Param("offset", type="integer", minimum=0, example=0),
            Param("limit", type="integer", minimum=1, maximum=1000, example=50),
            Param("columns"),
            _VERSION,
        ),
        returns="Preview",
        responses={
            "200": "Rows.",
            "415": "unsupported_format: the file does not parse as its format.",
            "503": "insight_unavailable.",
        },
    ),
    _r(
        "GET",
        D + "/{dataset_id}/metadata",
        insight.metadata,
        "Schema, statistics, quality.",
        "insight",
        params=(_ID, _VERSION),
        returns="Metadata",
        responses={
            "200": "The profile.",
            "202": "analysis_pending; retry after Retry-After.",
            "415": "unsupported_format: the file does not parse as its format.",
            "422": "analysis_failed: the file could not be analysed.",
            "503": "insight_unavailable.",
        },
        extra={"pending": True},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/grants",
        datasets.list_grants,
        "The dataset's grants.",
        "people",
        params=(_ID,),
        returns="GrantList",
        responses={"200": "Grants."},
    ),
    _r(
        "POST",
        D + "/{dataset_id}/grants",
        datasets.add_grant,
        "Share the dataset.",
        "people",
        params=(_ID,),
        body="GrantRequest",
        returns="Grant",
        responses={"201": "Shared."},
    ),
    _r(
        "DELETE",
        D + "/{dataset_id}/grants/{grant_id}",
        datasets.delete_grant,
        "Withdraw a share.",
        "people",
        params=(_ID, Param("grant_id", "path")),
        responses={"204": "Withdrawn."},
    ),
    _r(
        "GET",
        D + "/{dataset_id}/download-policy",
        datasets.get_dataset_policy,
        "The dataset's own and effective policy.",
        "people",
        params=(_ID,),
        returns="DatasetPolicy",
        responses={"200": "The policy."},
    ),
    _r(
        "PUT",
        D + "/{dataset_id}/download-policy",
        datasets.set_dataset_policy,
        "Tighten the dataset's policy.",
        "people",
        params=(_ID,),
        body="DownloadPolicy",
        returns="DatasetPolicy",
        responses={"200": "The policy now in force."},
    ),
    _r(
        "GET",
        "/api/v1/me",
        people.me,
        "The principal.",
        "people",
        returns="Me",
        responses={"200": "User, organisations and roles."},
    ),
    _r(
        "GET",
        "/api/v1/me/quota",
        people.my_quota,
        "Quota usage and limits.",
        "people",
        returns="Quota",
        responses={"200": "Usage per window."},
    ),
    _r(
        "POST",
        "/api/v1/me/api-keys",
        people.create_api_key,
        "Create an API key.",
        "people",
        body="ApiKeyRequest",
        returns="ApiKeyCreated",
        responses={"201": "The key, shown once."},
    ),
    _r(
        "GET",
        "/api/v1/me/api-keys",
        people.list_api_keys,
        "Own API keys.",
        "people",
        returns="ApiKeyList",
        responses={"200": "Keys without secrets."},
    ),
    _r(
        "DELETE",
        "/api/v1/me/api-keys/{key_id}",
        people.revoke_api_key,
        "Revoke an API key.",
        "people",
        params=(Param("key_id", "path"),),
        responses={"204": "Revoked."},
    ),
    _r(
        "GET",
        "/api/v1/organizations/{org}/download-policy",
        people.get_org_policy,
        "The organisation's download policy.",
        "people",
        params=(Param("org", "path"),),
        returns="DownloadPolicy",
        responses={"200": "The policy."},
    ),
    _r(
        "PUT",
        "/api/v1/organizations/{org}/download-policy",
        people.set_org_policy,
        "Replace the organisation's download policy.",
        "people",
        params=(Param("org", "path"),),
        body="DownloadPolicy",
        returns="DownloadPolicy",
        responses={"200": "Saved."},
    ),
    _r(
        "GET",
        "/healthz",
        ops.healthz,
        "Liveness.",
        "ops",
        auth=False,
        returns="Status",
        responses={"200": "The process is up."},
    ),
    _r(
        "GET",
        "/readyz",
        ops.readyz,
        "Readiness: database and storage.",
        "ops",
        auth=False,
        returns="Status",
        responses={"200": "Ready.", "503": "A backend is unreachable."},
    ),
    _r(
        "GET",
        "/metrics",
        ops.metrics,
        "Prometheus metrics.",
        "ops",
        auth=False,
        returns="text",
        extra={"media": "text/plain"},
        responses={"200": "Text format."},
    ),
    _r(
        "GET",
        "/api/v1/openapi.json",
        _openapi,
        "This document.",
        "ops",
        auth=False,
        returns="text",
        responses={"200": "OpenAPI 3.1."},
    ),
    _r(
        "GET",
        "/api/docs",
        _docs,
        "The API documentation page.",
        "ops",
        auth=False,
        returns="text",
        extra={"media": "text/html"},
        responses={"200": "HTML."},
    ),
)


def _background(interval: float | None) -> Any:
    async def context(app: web.Application) -> AsyncIterator[None]:
        task = None
        if interval:
            task = asyncio.create_task(_cleanup_loop(app[DATADL], interval))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Download records written behind the responses are saved before the app goes.
        flush = getattr(app[DATADL].audit_log, "flush", None)
        if flush is not None:
            try:
                await flush()
            except Unavailable as exc:
                log.error("audit_save_failed_on_shutdown", error=str(exc))

    return context


async def _cleanup_loop(core: Datadl, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            report = await core.cleanup.run()
            log.info("cleanup_ran", report=attrs.asdict(report))
        except Exception:
            log.exception("cleanup_failed")


def create_app(
    app: Datadl,
    *,
    base_url: str | None = None,
    settings: Settings | None = None,
    config: WebConfig | None = None,
    cleanup_interval: float | None = None,
) -> web.Application:
    """The aiohttp application serving API.md over ``app``.

    ``base_url`` makes absolute URLs (download tokens); ``settings`` supplies the upload
    limit; ``config`` overrides the HTTP layer's settings whole. ``cleanup_interval``
    (seconds) runs ``app.cleanup`` in the background while the server is up.
    """
    if config is None:
        config = WebConfig(
            base_url=base_url,
            max_upload_bytes=settings.max_upload_bytes if settings is not None else None,
        )
    elif base_url is not None:
        config = attrs.evolve(config, base_url=base_url)
    web_app = web.Application(
        middlewares=[ops.observe_middleware, invalidate_middleware, error_middleware],
        client_max_size=JSON_MAX_BYTES,
    )
    web_app[DATADL] = app
    web_app[READ_CACHE] = ReadCache()
    web_app[CONFIG] = config
    web_app[METRICS] = Metrics()
    web_app[SESSION_KEY] = derive_session_key(app.keys.cursor_key())
    for route in ROUTES:
        web_app.router.add_route(route.method, route.path, route.handler)
    web_app.cleanup_ctx.append(_background(cleanup_interval))
    return web_app
