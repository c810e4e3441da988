"""The OpenAPI document describes exactly the served routes; the docs page works offline."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from datadl.entrypoints.web import create_app
from tests.e2e.conftest import Server


def served(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        routes.add((route.method.lower(), info))
    return routes


async def test_every_route_is_documented_and_every_operation_served(srv: Server) -> None:
    """The set of (method, path) in the document equals the app's router, both ways."""
    async with srv.http.get(f"{srv.url}/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == served(srv.app)
    assert document["openapi"].startswith("3.1")


async def test_download_operation_documents_ranges_conditionals_and_problems(srv: Server) -> None:
    """The download operation lists 200, 206, 304, 412, 416 and 429 and problem+json errors."""
    async with srv.http.get(f"{srv.url}/api/v1/openapi.json") as response:
        document = await response.json()
    responses = document["paths"]["/api/v1/datasets/{dataset_id}/download"]["get"]["responses"]
    assert {"200", "206", "304", "401", "403", "404", "412", "416", "429"} <= set(responses)
    assert "application/problem+json" in responses["416"]["content"]
    assert "Content-Range" in responses["416"]["headers"]
    assert "Retry-After" in responses["429"]["headers"]
    assert "ETag" in responses["200"]["headers"]
    refs = re.findall(r'"#/components/schemas/([A-Za-z]+)"', str(document).replace("'", '"'))
    assert set(refs) <= set(document["components"]["schemas"])


async def test_docs_page_lists_every_path_and_loads_nothing_remote(srv: Server) -> None:
    """/api/docs is self-contained HTML naming every path, with no script or remote asset."""
    async with srv.http.get(f"{srv.url}/api/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    for _, path in served(srv.app):
        assert f"<code>{path}</code>" in page
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_two_apps_keep_separate_metrics(srv: Server) -> None:
    """Each app has its own Prometheus registry, so two can live in one process."""
    first, second = create_app(srv.core), create_app(srv.core)
    assert first is not second


async def test_document_is_valid_openapi_3_1(srv: Server) -> None:
    """The served document passes the OpenAPI 3.1 specification validator."""
    validator = pytest.importorskip("openapi_spec_validator")
    async with srv.http.get(f"{srv.url}/api/v1/openapi.json") as response:
        validator.validate(await response.json())
