"""Every error is RFC 9457 problem+json with a stable code and a hint, and leaks nothing."""

from __future__ import annotations

import io
from typing import Any

import attrs
import pytest
import structlog

from datadl.domain import decision, errors
from datadl.entrypoints.web import create_app
from datadl.entrypoints.web.errors import problem_for, status_of
from tests.e2e.conftest import Server, running

PROBLEM_KEYS = {"type", "title", "status", "code", "detail", "hint"}


async def test_missing_key_answers_401_problem_with_www_authenticate(srv: Server) -> None:
    """A bad API key answers 401 auth_required with WWW-Authenticate: Bearer."""
    async with srv.http.get(
        f"{srv.url}/api/v1/me", headers={"Authorization": "Bearer ddl_nope_nope"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/problem+json"
        body = await response.json(content_type=None)
    assert set(body) >= PROBLEM_KEYS
    assert body["type"] == "https://datadl.dev/problems/auth-required"
    assert body["code"] == "auth_required"


async def test_non_bearer_authorization_is_refused(srv: Server) -> None:
    """Authorization with another scheme answers 401 rather than being ignored."""
    async with srv.http.get(
        f"{srv.url}/api/v1/me", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    ) as response:
        assert response.status == 401


async def test_unknown_route_and_wrong_method_are_problems(srv: Server) -> None:
    """aiohttp's own 404 and 405 are problem+json too, 405 keeping its Allow header."""
    async with srv.http.get(f"{srv.url}/api/v1/nothing-here") as response:
        assert response.status == 404
        assert (await response.json(content_type=None))["code"] == "not_found"
    async with srv.http.post(f"{srv.url}/api/v1/me") as response:
        assert response.status == 405
        assert response.content_type == "application/problem+json"
        assert "GET" in response.headers["Allow"]
        assert (await response.json(content_type=None))["code"] == "method_not_allowed"


async def test_oversized_json_body_answers_413_problem(srv: Server) -> None:
    """A JSON body over 1 MiB answers 413 payload_too_large as problem+json."""
    async with srv.http.post(
        f"{srv.url}/api/v1/me/api-keys",
        data=io.BytesIO(b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
        headers={**srv.auth("mark"), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"
        assert (await response.json(content_type=None))["code"] == "payload_too_large"


async def test_malformed_json_and_unknown_fields_are_bad_requests(srv: Server) -> None:
    """A body that is not JSON, or names unknown fields, answers 400 bad_request."""
    for data in (b"{not json", b'{"name": "k", "colour": "red"}', b"[1, 2]"):
        async with srv.http.post(
            f"{srv.url}/api/v1/me/api-keys",
            data=data,
            headers={**srv.auth("mark"), "Content-Type": "application/json"},
        ) as response:
            assert response.status == 400
            assert (await response.json(content_type=None))["code"] == "bad_request"


@attrs.frozen
class Exploding:
    """A dataset service whose every call fails with a message full of secrets."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("SELECT * FROM api_keys WHERE path='/srv/datadl/blobs/x'")

        return fail


async def test_unexpected_error_is_a_500_that_leaks_nothing(srv: Server) -> None:
    """An unexpected exception answers 500 internal with no SQL, path or traceback; it is logged."""
    app = create_app(attrs.evolve(srv.core, datasets=Exploding()))
    with structlog.testing.capture_logs() as logs:
        async with (
            running(app) as (url, http),
            http.get(f"{url}/api/v1/datasets", headers=srv.auth("mark")) as response,
        ):
            assert response.status == 500
            text = await response.text()
            request_id = response.headers["X-Request-Id"]
    assert '"code": "internal"' in text
    for leak in ("SELECT", "/srv/", "Traceback", "RuntimeError", "api_keys"):
        assert leak not in text
    crashed = [e for e in logs if e["event"] == "request_crashed"]
    assert crashed and crashed[0]["request_id"] == request_id


async def test_problem_hint_and_detail_for_a_domain_error(srv: Server) -> None:
    """A domain error's message and hint reach the client as detail and hint."""
    async with srv.http.get(
        f"{srv.url}/api/v1/datasets?limit=1000", headers=srv.auth("mark")
    ) as response:
        body = await response.json(content_type=None)
    assert response.status == 400
    assert body["detail"] == "limit must be between 1 and 100."
    assert body["hint"] == "Use ?limit=20."


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest(), 400),
        (errors.InvalidCursor(), 400),
        (errors.UnsupportedFormat(), 415),
        (errors.PayloadTooLarge(), 413),
        (errors.RangeNotSatisfiable(10), 416),
        (errors.PreconditionFailed(), 412),
        (errors.NotFound(), 404),
        (errors.Conflict(), 409),
        (errors.Unavailable(), 503),
        (errors.StorageUnavailable(), 503),
        (errors.FileMissing(), 410),
        (errors.FileCorrupted(), 500),
        (errors.TokenInvalid(), 403),
        (errors.TokenExpired(), 403),
        (errors.TooManyRows(), 422),
        (errors.AnalysisFailed("bad file"), 422),
        (decision.AuthRequired(), 401),
        (decision.Forbidden(), 403),
        (decision.FormatNotAllowed(), 403),
        (decision.TooLarge(), 403),
        (decision.TokenRequired(), 403),
        (decision.TermsNotAccepted(), 403),
        (decision.TokenExhausted(), 403),
        (decision.RateLimited(retry_after=3), 429),
        (decision.QuotaExceeded(), 429),
        (errors.DatadlError(), 500),
    ],
)
def test_every_code_has_its_status(error: errors.DatadlError, status: int) -> None:
    """Each stable code answers the HTTP status API.md gives it; 429 always has Retry-After."""
    assert status_of(error) == status
    response = problem_for(error)
    assert response.status == status
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "reason" not in (response.text or "")
