"""Preview and metadata over HTTP, against a fake insight service and without one."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import attrs

from datadl.domain.access import Principal
from datadl.domain.errors import AnalysisPending, NotFound
from datadl.domain.tables import Column, Page, QualityIssue, QualityReport, TableProfile
from datadl.entrypoints.web import create_app
from tests.e2e.conftest import PENGUINS, Server, running


class FakeInsight:
    """Answers a fixed profile and page, or 'pending', and remembers what it was asked."""

    def __init__(self, *, pending: bool = False) -> None:
        self.pending = pending
        self.asked: list[dict[str, Any]] = []

    async def metadata(
        self, principal: Principal, dataset_id: str, *, version: int | None = None
    ) -> TableProfile:
        if dataset_id == "missing":
            raise NotFound("No such dataset.")
        if self.pending:
            raise AnalysisPending(retry_after=7)
        return TableProfile(
            sha256="0" * 64,
            engine_version="1",
            columns=(Column("x", "integer", False), Column("when", "date")),
            row_count=2,
            statistics={"x": {"count": 2, "mean": float("nan"), "min": 1}},
            quality=QualityReport(
                1.0, 1.0, 1.0, 1.0, 0.5, (QualityIssue("x", "k", "low", "m", 1),)
            ),
            analyzed_at=datetime(2026, 1, 1, tzinfo=UTC),
        )

    async def preview(self, principal: Principal, dataset_id: str, **kw: Any) -> Page:
        self.asked.append(kw)
        return Page(
            columns=(Column("x", "integer"), Column("when", "date")),
            rows=((1, date(2026, 1, 2)), (2, None)),
            offset=kw["offset"],
            limit=kw["limit"],
            total_rows=2,
        )


async def test_preview_passes_the_window_and_renders_rows(srv: Server) -> None:
    """Preview forwards offset, limit and columns and renders typed rows as JSON."""
    fake = FakeInsight()
    async with running(create_app(attrs.evolve(srv.core, insight=fake))) as (url, http):
        async with http.get(
            f"{url}/api/v1/datasets/d1/preview?offset=5&limit=2&columns=x,when",
            headers=srv.auth("mark"),
        ) as response:
            assert response.status == 200
            body = await response.json()
        async with http.get(
            f"{url}/api/v1/datasets/d1/preview?limit=1001", headers=srv.auth("mark")
        ) as response:
            assert response.status == 400
    assert fake.asked[0] == {"offset": 5, "limit": 2, "columns": ["x", "when"], "version": None}
    assert body == {
        "columns": [{"name": "x", "type": "integer"}, {"name": "when", "type": "date"}],
        "rows": [[1, "2026-01-02"], [2, None]],
        "offset": 5,
        "limit": 2,
        "total_rows": 2,
    }


async def test_metadata_renders_the_profile(srv: Server) -> None:
    """Metadata answers schema, row_count, statistics (NaN as null), quality and analyzed_at."""
    async with running(create_app(attrs.evolve(srv.core, insight=FakeInsight()))) as (url, http):
        async with http.get(f"{url}/api/v1/datasets/d1/metadata") as response:
            assert response.status == 200
            body = await response.json()
        async with http.get(f"{url}/api/v1/datasets/missing/metadata") as response:
            assert response.status == 404
    assert body["schema"]["columns"][0] == {"name": "x", "type": "integer", "nullable": False}
    assert body["row_count"] == 2
    assert body["statistics"]["x"] == {"count": 2, "mean": None, "min": 1}
    assert body["quality"]["issues"][0]["affected_rows"] == 1
    assert body["analyzed_at"] == "2026-01-01T00:00:00Z"


async def test_metadata_while_analysing_answers_202_with_retry_after(srv: Server) -> None:
    """A pending analysis answers 202 with Retry-After and code analysis_pending."""
    fake = FakeInsight(pending=True)
    async with (
        running(create_app(attrs.evolve(srv.core, insight=fake))) as (url, http),
        http.get(f"{url}/api/v1/datasets/d1/metadata") as response,
    ):
        assert response.status == 202
        assert response.headers["Retry-After"] == "7"
        assert (await response.json())["code"] == "analysis_pending"


async def test_without_insight_both_answer_503(srv: Server) -> None:
    """A server without an insight service answers 503 insight_unavailable."""
    async with running(create_app(attrs.evolve(srv.core, insight=None))) as (url, http):
        for what in ("preview", "metadata"):
            async with http.get(f"{url}/api/v1/datasets/d1/{what}") as response:
                assert response.status == 503
                assert (await response.json(content_type=None))["code"] == "insight_unavailable"


async def test_real_preview_of_the_penguins(srv: Server) -> None:
    """The server's own insight service previews the seeded penguins."""
    async with srv.http.get(
        f"{srv.url}/api/v1/datasets/{srv.penguins.id}/preview?limit=3", headers=srv.auth("mark")
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["columns"][0]["name"] == "species"
    assert len(body["rows"]) == 3
    assert body["rows"][0][0] == "Adelie"


async def test_real_metadata_is_pending_then_ready(srv: Server) -> None:
    """The real service answers 202 with Retry-After first, then the profile once analysed."""
    url = f"{srv.url}/api/v1/datasets/{srv.penguins.id}/metadata"
    async with srv.http.get(url, headers=srv.auth("mark")) as response:
        first = response.status
        if first == 202:
            assert int(response.headers["Retry-After"]) >= 1
    assert first in (200, 202)
    await srv.core.insight.drain()
    async with srv.http.get(url, headers=srv.auth("mark")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["row_count"] == PENGUINS.count(b"\n") - 1
    assert body["schema"]["columns"][0]["name"] == "species"
    assert 0 <= body["quality"]["score"] <= 1
