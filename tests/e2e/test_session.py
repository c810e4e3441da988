"""The signed session cookie and CSRF protection that the web pages will use."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from datadl.entrypoints.web.auth import (
    SESSION_COOKIE,
    principal_of,
    read_session,
    sign_session,
    start_session,
)
from datadl.entrypoints.web.config import DATADL
from tests.e2e.conftest import Server, running

KEY = b"k" * 32
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_signed_value_reads_back_and_tampering_fails() -> None:
    """A signed session reads back; any change to claims or signature, or expiry, voids it."""
    value = sign_session(KEY, "u1", "csrf", int(NOW.timestamp()) + 60)
    assert read_session(KEY, value, NOW) == ("u1", "csrf")
    body, mac = value.split(".")
    assert read_session(KEY, body + "x." + mac, NOW) is None
    assert read_session(KEY, body + "." + mac[:-2] + "AA", NOW) is None
    assert read_session(b"j" * 32, value, NOW) is None
    assert read_session(KEY, "garbage", NOW) is None
    expired = sign_session(KEY, "u1", "csrf", int(NOW.timestamp()))
    assert read_session(KEY, expired, NOW) is None


async def test_cookie_session_authenticates_and_post_needs_csrf(srv: Server) -> None:
    """The cookie is HttpOnly and SameSite=Lax; GET works; a POST without the CSRF token is 403."""
    app = srv.app
    user_id = (await srv.core.catalog.get_user("mark")).id

    async def login(request: web.Request) -> web.Response:
        response = web.json_response({})
        response.headers["X-CSRF"] = start_session(request, response, user_id)
        return response

    async def whoami(request: web.Request) -> web.Response:
        principal = await principal_of(request)
        return web.json_response({"user": principal.user_id})

    # A fresh app with two extra routes, as the web pages will add them.
    from datadl.entrypoints.web import create_app

    app = create_app(srv.core)
    app.router.add_post("/test/login", login)
    app.router.add_route("*", "/test/whoami", whoami)
    async with running(app) as (url, http):
        async with http.post(f"{url}/test/login") as response:
            csrf = response.headers["X-CSRF"]
            cookie = response.headers["Set-Cookie"]
        assert f"{SESSION_COOKIE}=" in cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        async with http.get(f"{url}/test/whoami") as response:
            assert (await response.json())["user"] == user_id
        async with http.post(f"{url}/test/whoami") as response:
            assert response.status == 403
        async with http.post(f"{url}/test/whoami", headers={"X-CSRF-Token": "wrong"}) as response:
            assert response.status == 403
        async with http.post(f"{url}/test/whoami", headers={"X-CSRF-Token": csrf}) as response:
            assert (await response.json())["user"] == user_id
        async with http.post(f"{url}/test/whoami", data={"csrf_token": csrf}) as response:
            assert (await response.json())["user"] == user_id
        async with http.get(f"{url}/api/v1/me") as response:
            assert (await response.json())["credential"] == "session"
    assert app[DATADL] is srv.core
