"""Downloads over HTTP: ranges, preconditions, tokens, progress, exact accounting."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import unicodedata
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web

from datadl.domain.accounting import Channel
from datadl.domain.conditional import format_http_date
from datadl.domain.errors import BadRequest, DatadlError
from datadl.domain.model import ORIGINAL
from datadl.entrypoints.web.auth import principal_of
from datadl.entrypoints.web.cache import READ_CACHE
from datadl.entrypoints.web.config import (
    BYTES_SENT,
    CONFIG,
    DATADL,
    METRICS,
    REQUEST_ID,
    RESPONSE_STARTED,
    WebConfig,
)
from datadl.entrypoints.web.render import API, json_response, read_json, record_json, rfc3339
from datadl.services.downloads import ClientInfo, Download, DownloadAsk, SendFile

log = structlog.get_logger()

_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._()+ -]")


def _fold(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _ASCII_SAFE.sub("_", folded).strip(" ._")


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename=`` and an RFC 8187 ``filename*=``.

    Control characters (CR and LF among them), quotes, backslashes and path separators
    never reach the header: the ASCII form replaces them, the UTF-8 form encodes only a
    cleaned name.
    """
    cleaned = "".join(
        "_" if ch in "/\\" else ch for ch in filename if unicodedata.category(ch)[0] != "C"
    ).strip(" .")
    cleaned = cleaned or "download"
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    ascii_stem, ascii_ext = _fold(stem) or "download", _fold(ext)
    ascii_name = f"{ascii_stem}.{ascii_ext}" if ascii_ext else ascii_stem
    utf8 = quote(cleaned, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8}"


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"{name} must be a non-negative integer.", hint=f"Use ?{name}=1.")
    return int(raw)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def download_headers(download: Download) -> dict[str, str]:
    """The headers API.md promises on a download answer (and its HEAD)."""
    headers = {
        "ETag": download.etag,
        "Last-Modified": format_http_date(download.last_modified),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private",
        "Content-Disposition": content_disposition(download.representation.filename),
        **download.ratelimit_headers,
    }
    if download.status != 304:
        headers["Content-Type"] = download.content_type
    if download.id is not None:
        headers["X-Download-Id"] = download.id
    digest = download.repr_digest
    if digest is not None:
        headers["Repr-Digest"] = digest
    content_range = download.content_range
    if content_range is not None:
        headers["Content-Range"] = content_range
    return headers


def _sendfile(request: web.Request, config: WebConfig) -> SendFile | None:
    """``loop.sendfile`` to the client, where the kernel can do it; None elsewhere.

    Only asyncio's own selector loop sends natively on a plain TCP transport; on uvloop
    or TLS ``loop.sendfile`` would fall back to executor reads, slower than the store's
    own read loop, so the body is written from the store there instead.
    """
    loop = asyncio.get_running_loop()
    transport = request.transport
    if (
        not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
        or transport is None
        or transport.get_extra_info("sslcontext") is not None
    ):
        return None

    async def sendfile(file: BinaryIO, offset: int, count: int) -> int:
        # The service sizes slices to last a fraction of a second at the client's rate,
        # so the write timeout catches a silent client here as it does on a write.
        sending = asyncio.ensure_future(
            loop.sendfile(transport, file, offset, count, fallback=False)
        )
        try:
            done, _ = await asyncio.wait({sending}, timeout=config.write_timeout)
        except BaseException:
            await _stop_sending(transport, sending)
            raise
        if not done:
            await _stop_sending(transport, sending)
            raise TimeoutError("the client took nothing for the write timeout")
        return sending.result()

    return sendfile


async def _stop_sending(transport: asyncio.Transport, sending: asyncio.Future[int]) -> None:
    """End a pending ``loop.sendfile`` so that the file's position says what it sent.

    Cancelling it would leave the position where the call began, losing the bytes it had
    handed to the kernel; shutting the socket instead makes its next ``sendfile`` fail,
    and asyncio then moves the position past what was sent. The connection is lost
    either way.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    await asyncio.wait({sending}, timeout=5)
    if not sending.done():
        sending.cancel()
    with contextlib.suppress(BaseException):
        await sending
    transport.abort()


async def download(request: web.Request) -> web.StreamResponse:
    """GET and HEAD /api/v1/datasets/{id}/download."""
    app = request.app[DATADL]
    metrics = request.app[METRICS]
    config = request.app[CONFIG]
    q = request.query
    token = q.get("token")
    principal = await principal_of(request)
    fmt = q.get("format") or ORIGINAL
    bearer = request.headers.get("Authorization") is not None
    ask = DownloadAsk(
        dataset_id=request.match_info["dataset_id"],
        format=fmt,
        version=_int_param(request, "version"),
        token=token,
        accept_terms=_truthy(q.get("accept_terms")),
        range=request.headers.get("Range"),
        if_range=request.headers.get("If-Range"),
        if_match=request.headers.get("If-Match"),
        if_none_match=request.headers.get("If-None-Match"),
        if_modified_since=request.headers.get("If-Modified-Since"),
        if_unmodified_since=request.headers.get("If-Unmodified-Since"),
        head=request.method == "HEAD",
        client=ClientInfo(
            address=request.remote,
            user_agent=(request.headers.get("User-Agent") or "")[:500] or None,
            channel=Channel.API if bearer else Channel.BROWSER,
        ),
    )
    cache = request.app[READ_CACHE]
    try:
        opened = await app.downloads.open(principal, ask)
    except DatadlError as error:
        metrics.denials.labels(code=error.code).inc()
        raise
    finally:
        # A download changes its dataset's download_count (or, failing, its state).
        cache.forget_dataset(ask.dataset_id)
    async with opened:
        response = web.StreamResponse(status=opened.status, headers=download_headers(opened))
        # Prepared here, so the access-log middleware cannot add the request id later.
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        if opened.status != 304:
            response.content_length = opened.content_length
        if request.method == "HEAD" or opened.status == 304:
            await response.prepare(request)
            await response.write_eof()
            return response
        started = time.monotonic()
        metrics.active_downloads.inc()
        try:
            await response.prepare(request)
            request[RESPONSE_STARTED] = True

            async def write(piece: bytes) -> None:
                # A client that takes less than a piece (at most SEND_PIECE, 256 KiB) within
                # the write timeout is gone: abort and settle. A slow but steady client
                # (over about 4 KB/s with the 60 s default) is not taken for a silent one.
                async with asyncio.timeout(config.write_timeout):
                    await response.write(piece)

            try:
                await opened.send(write, _sendfile(request, config))
            except (ConnectionError, TimeoutError) as exc:
                # The client hung up or stalled: the service has recorded the abort with
                # the bytes sent. Drop the connection; aiohttp ends such a response quietly.
                log.info("download_aborted", download_id=opened.id, reason=type(exc).__name__)
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        finally:
            cache.forget_dataset(ask.dataset_id)
            request[BYTES_SENT] = opened.bytes_sent
            metrics.active_downloads.dec()
            record = opened.record
            status = record.status.value if record is not None else "unknown"
            metrics.downloads.labels(status=status, format=fmt).inc()
            metrics.download_bytes.labels(status=status, format=fmt).inc(opened.bytes_sent)
            metrics.download_seconds.labels(format=fmt).observe(time.monotonic() - started)
    return response


async def issue_token(request: web.Request) -> web.Response:
    """POST /api/v1/datasets/{id}/download-token."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    body = await read_json(request, allow_null=True)
    allowed = ("format", "expires_in", "max_uses", "accept_terms", "version")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)}.", hint="See API.md.")
    fmt = body.get("format", ORIGINAL)
    expires_in = body.get("expires_in", 3600)
    max_uses = body.get("max_uses", 1)
    accept = body.get("accept_terms", False)
    version = body.get("version")
    if not isinstance(fmt, str):
        raise BadRequest("format must be a string.", hint='Use "csv" or "original".')
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        raise BadRequest("expires_in must be an integer of seconds.", hint="Use 3600.")
    if max_uses is not None and (not isinstance(max_uses, int) or isinstance(max_uses, bool)):
        raise BadRequest("max_uses must be an integer or null.", hint="Use 1.")
    if not isinstance(accept, bool):
        raise BadRequest("accept_terms must be true or false.", hint="Use true.")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31
    ):
        raise BadRequest("version must be a positive integer.", hint="Leave it out for the latest.")
    if not -(2**53) <= expires_in <= 2**53:
        raise BadRequest("expires_in is out of range.", hint="Use 3600.")
    dataset_id = request.match_info["dataset_id"]
    issued = await app.tokens.issue(
        principal,
        dataset_id,
        format=fmt,
        expires_in=expires_in,
        max_uses=max_uses,
        accept_terms=accept,
        version=version,
        client_address=request.remote,
    )
    claims = issued.claims
    query: dict[str, Any] = {"format": claims.format, "version": claims.version}
    query["token"] = issued.token
    url = f"{base_url(request)}{API}/datasets/{claims.dataset_id}/download?{urlencode(query)}"
    return json_response(
        {
            "token": issued.token,
            "token_id": claims.token_id,
            "url": url,
            "expires_at": rfc3339(claims.expires_at),
            "max_uses": claims.max_uses,
            "format": claims.format,
            "version": claims.version,
        },
        status=201,
        headers={**issued.ratelimit, "Cache-Control": "no-store"},
    )


def base_url(request: web.Request) -> str:
    """The configured public base URL, or the one the request came to."""
    configured = request.app[CONFIG].base_url
    if configured:
        return configured.rstrip("/")
    return str(request.url.origin())


async def revoke_token(request: web.Request) -> web.Response:
    """DELETE /api/v1/download-tokens/{token_id}."""
    app = request.app[DATADL]
    await app.tokens.revoke(await principal_of(request), request.match_info["token_id"])
    return web.Response(status=204)


async def download_progress(request: web.Request) -> web.Response:
    """GET /api/v1/downloads/{download_id}."""
    app = request.app[DATADL]
    record = await app.downloads.progress(
        await principal_of(request), request.match_info["download_id"]
    )
    return json_response(record_json(record))
