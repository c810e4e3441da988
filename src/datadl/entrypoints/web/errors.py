"""Every failure as an RFC 9457 problem document: one middleware, one status table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from datadl.domain.errors import (
    BadRequest,
    Conflict,
    DatadlError,
    FileCorrupted,
    FileMissing,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    Unavailable,
    UnsupportedFormat,
)
from datadl.entrypoints.web.config import REQUEST_ID, RESPONSE_STARTED
from datadl.entrypoints.web.handlers import Handler

log = structlog.get_logger()

PROBLEM_TYPE = "application/problem+json"
PROBLEM_BASE = "https://datadl.dev/problems/"

#: HTTP status for each stable code (API.md). Codes not listed fall back by error class.
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unsupported_format": 415,
    "payload_too_large": 413,
    "range_not_satisfiable": 416,
    "precondition_failed": 412,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    "storage_unavailable": 503,
    "file_missing": 410,
    "file_corrupted": 500,
    "auth_required": 401,
    "forbidden": 403,
    "format_not_allowed": 403,
    "too_large": 403,
    "token_required": 403,
    "terms_not_accepted": 403,
    "token_invalid": 403,
    "token_expired": 403,
    "token_exhausted": 403,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "too_many_rows": 422,
    "analysis_failed": 422,
    "analysis_pending": 503,
    "unprocessable": 422,
    "insight_unavailable": 503,
    "internal": 500,
}

_STATUS_BY_CLASS: tuple[tuple[type[DatadlError], int], ...] = (
    (BadRequest, 400),
    (UnsupportedFormat, 415),
    (PayloadTooLarge, 413),
    (RangeNotSatisfiable, 416),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (FileMissing, 410),
    (FileCorrupted, 500),
)

#: aiohttp's own refusals (unknown route, wrong method, body too large) as stable codes.
_HTTP_CODES: dict[int, tuple[str, str, str]] = {
    400: ("bad_request", "Bad request", "Check the request against the API documentation."),
    404: ("not_found", "Not found", "Check the URL against /api/v1/openapi.json."),
    405: (
        "method_not_allowed",
        "Method not allowed",
        "Use one of the methods in the Allow header.",
    ),
    413: (
        "payload_too_large",
        "Payload too large",
        "Send a smaller body; JSON bodies are limited to 1 MiB.",
    ),
}


def status_of(error: DatadlError) -> int:
    """The HTTP status a domain or port error answers with."""
    explicit = getattr(error, "status", None)
    if isinstance(explicit, int) and 100 <= explicit <= 599:
        return explicit
    if error.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[error.code]
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 500


def problem_response(
    status: int,
    *,
    code: str,
    title: str,
    detail: str,
    hint: str,
    headers: Mapping[str, str] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> web.Response:
    """A problem+json response with the stable ``code`` and a ``hint``."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code.replace("_", "-"),
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "hint": hint,
    }
    body.update(fields or {})
    out = dict(headers or {})
    if status == 401:
        out.setdefault("WWW-Authenticate", 'Bearer realm="datadl"')
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=PROBLEM_TYPE,
        headers=out,
    )


def problem_for(error: DatadlError) -> web.Response:
    """Render a ``DatadlError``, with Retry-After, RateLimit and Content-Range where due."""
    status = status_of(error)
    headers: dict[str, str] = {}
    fields: dict[str, Any] = {}
    ratelimit = error.extra.get("ratelimit")
    if isinstance(ratelimit, Mapping):
        headers.update({str(k): str(v) for k, v in ratelimit.items()})
    if error.retry_after is not None:
        fields["retry_after"] = error.retry_after
        headers["Retry-After"] = str(max(0, int(error.retry_after)))
    if error.resets_at is not None:
        fields["resets_at"] = error.resets_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if status == 429 and "Retry-After" not in headers:
        wait = 1
        if error.resets_at is not None:
            wait = max(1, int((error.resets_at - datetime.now(UTC)).total_seconds()))
        headers["Retry-After"] = str(wait)
        fields.setdefault("retry_after", wait)
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"
    etag = error.extra.get("etag")
    if status == 412 and isinstance(etag, str):
        headers["ETag"] = etag
    # Only plain JSON values the error chose to show; never the internal "reason".
    for key, value in error.extra.items():
        if key in ("ratelimit", "reason", "etag") or key in fields:
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            fields[key] = value
    return problem_response(
        status,
        code=error.code,
        title=error.title,
        detail=error.message,
        hint=error.hint,
        headers=headers,
        fields=fields,
    )


def http_problem(exc: web.HTTPException) -> web.Response:
    """aiohttp's own error (404 for an unknown route, 405, 413) as problem+json."""
    code, title, hint = _HTTP_CODES.get(
        exc.status, ("bad_request" if exc.status < 500 else "internal", exc.reason, "")
    )
    headers = {}
    allow = exc.headers.get("Allow")
    if allow:
        headers["Allow"] = allow
    return problem_response(
        exc.status,
        code=code,
        title=title,
        detail=exc.reason,
        hint=hint or "Check the request against the API documentation.",
        headers=headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json; a response already streaming is broken off instead."""
    try:
        return await handler(request)
    except DatadlError as error:
        if request.get(RESPONSE_STARTED):
            raise
        if status_of(error) >= 500:
            log.warning(
                "request_failed",
                code=error.code,
                reason=error.extra.get("reason"),
                request_id=request.get(REQUEST_ID),
            )
        return problem_for(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_problem(exc)
    except Exception:
        if request.get(RESPONSE_STARTED):
            raise
        log.exception("request_crashed", request_id=request.get(REQUEST_ID))
        return problem_response(
            500,
            code="internal",
            title="Internal error",
            detail="The server failed to answer this request.",
            hint="Try again later; if it persists, report it with the X-Request-Id.",
        )
