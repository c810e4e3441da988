"""Who is asking: Bearer API keys, the signed session cookie (with CSRF), or anonymous.

Download tokens (``?token=``) are verified by the download service itself, which
replaces the principal with the token's; nothing here logs a key, token or cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import datetime

from aiohttp import web

from datadl.domain.access import CredentialKind, Principal
from datadl.domain.decision import AuthRequired, Forbidden
from datadl.domain.errors import NotFound
from datadl.entrypoints.web.cache import READ_CACHE
from datadl.entrypoints.web.config import CONFIG, DATADL, PRINCIPAL, SESSION_KEY

SESSION_COOKIE = "datadl_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def derive_session_key(cursor_key: bytes) -> bytes:
    """A key for session cookies, separated from every other use of the server's secret."""
    return hmac.new(cursor_key, b"datadl-session-cookie-v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_session(key: bytes, user_id: str, csrf: str, expires_at: int) -> str:
    """The cookie value: base64url(JSON claims) '.' base64url(HMAC-SHA256 of that part)."""
    body = _b64(
        json.dumps({"u": user_id, "c": csrf, "e": expires_at}, separators=(",", ":")).encode()
    )
    mac = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def read_session(key: bytes, value: str, now: datetime) -> tuple[str, str] | None:
    """The (user id, CSRF token) of a valid, unexpired cookie value; None otherwise."""
    body, dot, mac = value.partition(".")
    if not dot or len(value) > 4096:
        return None
    try:
        expected = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(claims, dict):
        return None
    user, csrf, expires = claims.get("u"), claims.get("c"), claims.get("e")
    if not isinstance(user, str) or not isinstance(csrf, str) or not isinstance(expires, int):
        return None
    if now.timestamp() >= expires:
        return None
    return user, csrf


def start_session(request: web.Request, response: web.StreamResponse, user_id: str) -> str:
    """Set a signed session cookie for ``user_id`` on ``response``; returns its CSRF token.

    The web pages (later) call this after a sign-in; the cookie is HttpOnly and
    SameSite=Lax, and Secure when the server is configured for HTTPS.
    """
    app = request.app
    config = app[CONFIG]
    now = app[DATADL].clock.now()
    csrf = secrets.token_urlsafe(24)
    expires = int(now.timestamp()) + config.session_ttl_seconds
    response.set_cookie(
        SESSION_COOKIE,
        sign_session(app[SESSION_KEY], user_id, csrf, expires),
        max_age=config.session_ttl_seconds,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=config.secure_cookies,
    )
    return csrf


def end_session(response: web.StreamResponse) -> None:
    """Remove the session cookie."""
    response.del_cookie(SESSION_COOKIE, path="/")


def session_of(request: web.Request) -> tuple[str, str] | None:
    """The (user id, CSRF token) of the request's session cookie, if it is valid."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    return read_session(request.app[SESSION_KEY], value, request.app[DATADL].clock.now())


async def csrf_protect(request: web.Request) -> None:
    """Refuse a state-changing request whose CSRF token does not match its session's.

    The token is read from the ``X-CSRF-Token`` header or, for urlencoded form posts,
    from the ``csrf_token`` field. A request without a session has nothing to protect.
    """
    if request.method in _SAFE_METHODS:
        return
    session = session_of(request)
    if session is None:
        return
    presented = request.headers.get(CSRF_HEADER)
    # Only a small urlencoded form is read here; a multipart upload is streamed by its
    # handler, so its page sends the token in the header instead.
    if presented is None and request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if presented is None or not hmac.compare_digest(presented.encode(), session[1].encode()):
        raise Forbidden(
            "The CSRF token is missing or does not match the session.",
            hint="Reload the page and submit the form again.",
        )


async def principal_of(request: web.Request) -> Principal:
    """Authenticate the request once and remember the principal on it."""
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    app = request.app[DATADL]
    header = request.headers.get("Authorization")
    principal: Principal
    if header is not None:
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthRequired(
                "The Authorization header must be 'Bearer <api key>'.",
                hint="Send 'Authorization: Bearer ddl_...' with a key from /api/v1/me/api-keys.",
            )
        key = credential.strip()
        cache = request.app[READ_CACHE]
        cached = cache.principal(key)
        if cached is None:
            cached = await app.accounts.authenticate_api_key(key)
            cache.remember_principal(key, cached)
        principal = cached
    else:
        session = session_of(request)
        if session is not None:
            await csrf_protect(request)
            try:
                principal = await app.accounts.principal_for(
                    session[0], credential=CredentialKind.SESSION
                )
            except NotFound:
                principal = Principal.anonymous()
        else:
            principal = Principal.anonymous()
    request[PRINCIPAL] = principal
    return principal
