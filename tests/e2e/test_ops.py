"""Health, readiness, metrics, request ids and the access log."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import attrs
import structlog

from datadl.domain.errors import StorageUnavailable
from datadl.domain.model import Visibility
from datadl.entrypoints.web import configure_logging, create_app
from tests.e2e.conftest import PENGUINS, Server, running


async def test_healthz_and_readyz(srv: Server) -> None:
    """Both answer 200 when the process, the catalogue and the blob store are fine."""
    async with srv.http.get(f"{srv.url}/healthz") as response:
        assert (response.status, (await response.json())["status"]) == (200, "ok")
    async with srv.http.get(f"{srv.url}/readyz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["checks"] == {"database": "ok", "storage": "ok"}


class BrokenBlobs:
    """A blob store that cannot be reached."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> None:
            raise StorageUnavailable("s3 at 10.0.0.1 refused")

        return fail


async def test_readyz_answers_503_when_storage_is_down(srv: Server) -> None:
    """An unreachable blob store makes /readyz answer 503 naming storage, not the address."""
    app = create_app(attrs.evolve(srv.core, blobs=BrokenBlobs()))
    async with running(app) as (url, http), http.get(f"{url}/readyz") as response:
        assert response.status == 503
        text = await response.text()
    assert '"storage": "unavailable"' in text
    assert "10.0.0.1" not in text


async def test_request_metrics_count_by_route_and_bound_the_method_label(srv: Server) -> None:
    """Requests count by method, route and status; a method outside the usual ones (HTTP
    parsers know dozens, WebDAV's among them) counts as OTHER, so clients cannot grow the
    metrics with every method they try."""
    for method in ("GET", "GET", "PROPFIND", "PURGE"):
        async with srv.http.request(method, f"{srv.url}/healthz") as r:
            await r.read()
    async with srv.http.get(f"{srv.url}/metrics") as response:
        text = await response.text()
    assert 'datadl_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    assert 'method="OTHER",route="unmatched",status="405"} 2.0' in text
    assert "PROPFIND" not in text and "PURGE" not in text
    assert 'datadl_http_request_duration_seconds_count{route="/healthz"} 2.0' in text


async def test_metrics_count_downloads_bytes_and_denials(srv: Server) -> None:
    """/metrics reports downloads and bytes by status and format, denials by code."""
    async with srv.http.get(srv.download_url(srv.penguins), headers=srv.auth("mark")) as r:
        await r.read()
    async with srv.http.get(srv.download_url(srv.private), headers=srv.auth("oscar")) as r:
        assert r.status == 404
    async with srv.http.get(f"{srv.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'datadl_downloads_total{format="original",status="completed"} 1.0' in text
    assert (
        f'datadl_download_bytes_total{{format="original",status="completed"}} '
        f"{float(len(PENGUINS))}" in text
    )
    assert 'datadl_download_denials_total{code="not_found"} 1.0' in text
    assert "datadl_active_downloads 0.0" in text
    assert "datadl_download_duration_seconds_bucket" in text


async def test_request_id_is_echoed_or_generated(srv: Server) -> None:
    """A sane incoming X-Request-Id is echoed; otherwise one is generated."""
    async with srv.http.get(f"{srv.url}/healthz", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    async with srv.http.get(f"{srv.url}/healthz", headers={"X-Request-Id": "bad id!"}) as r:
        assert r.headers["X-Request-Id"] != "bad id!"
        assert len(r.headers["X-Request-Id"]) == 32
    async with srv.http.get(srv.download_url(srv.penguins), headers=srv.auth("mark")) as r:
        assert len(r.headers["X-Request-Id"]) == 32
    # A streamed answer, its HEAD and a problem carry the id too.
    for method, url in (
        ("GET", srv.download_url(srv.penguins)),
        ("HEAD", srv.download_url(srv.penguins)),
        ("GET", f"{srv.url}/api/v1/datasets/no-such-dataset"),
    ):
        headers = {**srv.auth("mark"), "X-Request-Id": f"{method}-1"}
        async with srv.http.request(method, url, headers=headers) as r:
            assert r.headers["X-Request-Id"] == f"{method}-1", (method, url, r.status)


async def test_access_log_has_one_event_per_request_and_no_secrets(srv: Server) -> None:
    """Each request logs one http_request event with its id; keys and tokens never appear."""
    async with srv.http.post(
        f"{srv.url}/api/v1/datasets/{srv.penguins.id}/download-token",
        json={},
        headers=srv.auth("mark"),
    ) as response:
        token = (await response.json())["token"]
    with structlog.testing.capture_logs() as logs:
        async with srv.http.get(
            srv.download_url(srv.penguins) + f"?token={token}", headers={"X-Request-Id": "r1"}
        ) as response:
            await response.read()
            assert response.status == 200
        async with srv.http.get(f"{srv.url}/api/v1/me", headers=srv.auth("mark")) as response:
            assert response.status == 200
    events = [e for e in logs if e["event"] == "http_request"]
    assert len(events) == 2
    assert events[0]["request_id"] == "r1"
    assert events[0]["bytes"] == srv.penguins.file.size_bytes
    assert (events[0]["status"], events[0]["method"]) == (200, "GET")
    assert events[0]["route"] == "/api/v1/datasets/{dataset_id}/download"
    flat = repr(logs)
    assert token not in flat
    assert srv.keys["mark"] not in flat
    assert srv.keys["mark"].split("_", 2)[2] not in flat


async def test_access_log_counts_the_bytes_of_sendfile_ranges_and_aborts(srv: Server) -> None:
    """bytes is what left: a range sent with sendfile, and what an aborted client took."""
    big = await srv.publish(
        "olivia",
        b"a,b\n" + b"1,2\n" * 2_000_000,
        filename="big.csv",
        visibility=Visibility.ORGANIZATION,
    )
    url = srv.download_url(big)
    with structlog.testing.capture_logs() as logs:
        headers = {**srv.auth("mark"), "Range": "bytes=100-65635"}
        async with srv.http.get(url, headers=headers) as response:
            assert response.status == 206
            assert len(await response.read()) == 65536
        async with srv.http.get(url, headers=srv.auth("mark")) as response:
            assert response.status == 200
            await response.content.readexactly(1 << 16)
            response.close()  # hang up mid-body
        for _ in range(100):
            if len([e for e in logs if e["event"] == "http_request"]) == 2:
                break
            await asyncio.sleep(0.05)
    ranged, aborted = [e for e in logs if e["event"] == "http_request"]
    assert ranged["bytes"] == 65536
    assert 0 < aborted["bytes"] < big.file.size_bytes


async def test_configured_access_log_is_one_json_line_per_request(srv: Server) -> None:
    """With configure_logging, each request writes one JSON line with its id and status."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        async with srv.http.get(f"{srv.url}/healthz", headers={"X-Request-Id": "json-1"}) as r:
            assert r.status == 200
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (event,) = [e for e in lines if e["event"] == "http_request"]
    assert (event["request_id"], event["status"], event["level"]) == ("json-1", 200, "info")
    assert event["timestamp"].endswith("Z")
