"""Liveness, readiness, metrics, and the access log with a request id."""

from __future__ import annotations

import os
import re
import time

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from datadl.domain.errors import NotFound
from datadl.entrypoints.web.config import BYTES_SENT, DATADL, METRICS, PRINCIPAL, REQUEST_ID
from datadl.entrypoints.web.handlers import Handler
from datadl.entrypoints.web.logs import access_log
from datadl.entrypoints.web.render import json_response

log = structlog.get_logger()

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_PROBE_KEY = "datadl-readyz-probe"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the catalogue and the blob store each answer one cheap call."""
    app = request.app[DATADL]
    checks: dict[str, str] = {}
    try:
        await app.catalog.get_organization(_PROBE_KEY)
        checks["database"] = "ok"
    except NotFound:
        checks["database"] = "ok"
    except Exception:
        log.warning("readiness_failed", component="database")
        checks["database"] = "unavailable"
    try:
        await app.blobs.exists(_PROBE_KEY)
        checks["storage"] = "ok"
    except Exception:
        log.warning("readiness_failed", component="storage")
        checks["storage"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _sent(request: web.Request, response: web.StreamResponse | None) -> int | None:
    # A download counts what it sent, sendfile included; aiohttp counts only its writes.
    if BYTES_SENT in request:
        return request[BYTES_SENT]
    if response is None:
        return None
    if response.prepared:
        return response.body_length
    return response.content_length


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id, then log one ``http_request`` event and count it.

    The query string is never logged: it may hold a download token.
    """
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    started = time.monotonic()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        elapsed = time.monotonic() - started
        route = _route_name(request)
        request.app[METRICS].observe_request(request.method, route, status, elapsed)
        principal = request.get(PRINCIPAL)
        access_log().info(
            "http_request",
            request_id=request_id,
            method=request.method,
            path=request.path,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            bytes=_sent(request, response),
            user_id=principal.user_id if principal is not None else None,
            remote=request.remote,
        )
