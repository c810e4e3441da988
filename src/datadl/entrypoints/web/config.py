"""What the web entrypoint is configured with, and the typed keys of the app and requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from aiohttp import web

from datadl.domain.access import Principal
from datadl.wiring import Datadl

if TYPE_CHECKING:
    from datadl.entrypoints.web.metrics import Metrics

#: JSON request bodies larger than this answer 413 (uploads stream and have their own cap).
JSON_MAX_BYTES = 1024 * 1024


@attrs.frozen
class WebConfig:
    """Server-side settings of the HTTP layer.

    ``base_url`` (``https://data.example.org``) makes absolute URLs such as a download
    token's ``url``; without it they are derived from the request's own host.
    ``write_timeout`` bounds how long one chunk may wait for a silent client;
    ``read_idle_timeout`` how long an upload may send nothing.
    """

    base_url: str | None = None
    max_upload_bytes: int | None = None
    write_timeout: float = 60.0
    read_idle_timeout: float = 60.0
    session_ttl_seconds: int = 14 * 86_400
    secure_cookies: bool = False


DATADL: web.AppKey[Datadl] = web.AppKey("datadl", Datadl)
CONFIG: web.AppKey[WebConfig] = web.AppKey("config", WebConfig)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SESSION_KEY: web.AppKey[bytes] = web.AppKey("session_key", bytes)

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
#: Set once a streamed response has sent its headers: errors then break the connection.
RESPONSE_STARTED: web.RequestKey[bool] = web.RequestKey("response_started", bool)
#: Body bytes a download handler sent itself (``sendfile`` bypasses aiohttp's count).
BYTES_SENT: web.RequestKey[int] = web.RequestKey("bytes_sent", int)
