"""Dataset endpoints: publish (raw and multipart, streamed), list, read, change, share."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from datadl.entrypoints.web import RUNNER_OPTIONS, WebConfig, create_app
from tests.e2e.conftest import PENGUINS, Server, running

DATASET_KEYS = {
    "id", "slug", "title", "description", "organization", "owner", "visibility", "tags",
    "license", "version", "status", "file", "row_count", "column_count", "download_count",
    "created_at", "updated_at", "links",
}  # fmt: skip


async def call(
    srv: Server, method: str, path: str, who: str | None = "olivia", **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {**(srv.auth(who) if who else {}), **kwargs.pop("headers", {})}
    async with srv.http.request(method, srv.url + path, headers=headers, **kwargs) as response:
        text = await response.text()
        body = None
        if text and response.content_type.endswith("json"):
            body = await response.json(content_type=None)
        return response.status, body, response


async def test_publish_raw_body_answers_201_with_location_and_dataset(srv: Server) -> None:
    """A raw CSV body with query facts publishes a dataset: 201, Location and the Dataset."""
    status, body, response = await call(
        srv,
        "POST",
        "/api/v1/datasets?organization=acme&title=Raw%20penguins&visibility=public&tags=a,b"
        "&filename=raw.csv",
        data=PENGUINS,
        headers={"Content-Type": "text/csv"},
    )
    assert status == 201, body
    assert set(body) == DATASET_KEYS
    assert response.headers["Location"] == f"/api/v1/datasets/{body['id']}"
    assert (body["organization"], body["owner"], body["visibility"]) == ("acme", "olivia", "public")
    assert body["tags"] == ["a", "b"]
    assert body["file"]["size_bytes"] == len(PENGUINS)
    assert body["file"]["format"] == "csv"
    assert body["links"]["download"] == f"/api/v1/datasets/{body['id']}/download"
    status, got, _ = await call(srv, "GET", f"/api/v1/datasets/{body['id']}", "oscar")
    assert (status, got["slug"]) == (200, "raw-penguins")


async def test_publish_multipart_streams_a_large_file(srv: Server) -> None:
    """A multipart form (fields, then file) publishes a multi-megabyte file intact."""
    big = b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * 7) for i in range(600_000))

    form = aiohttp.FormData()
    form.add_field("organization", "acme")
    form.add_field("title", "Big numbers")
    form.add_field("file", io.BytesIO(big), filename="numbers.csv", content_type="text/csv")
    status, body, _ = await call(srv, "POST", "/api/v1/datasets", data=form)
    assert status == 201, body
    assert (body["title"], body["file"]["filename"]) == ("Big numbers", "numbers.csv")
    assert body["file"]["size_bytes"] == len(big)
    async with srv.http.get(
        f"{srv.url}/api/v1/datasets/{body['id']}/download", headers=srv.auth("olivia")
    ) as response:
        assert await response.read() == big


async def test_publish_chunked_body_without_length(srv: Server) -> None:
    """A chunked upload of unknown length streams to storage."""

    async def pieces() -> AsyncIterator[bytes]:
        yield PENGUINS[:5000]
        yield PENGUINS[5000:]

    status, body, _ = await call(
        srv,
        "POST",
        "/api/v1/datasets?organization=acme&slug=chunked&format=csv",
        data=pieces(),
    )
    assert status == 201, body
    assert body["file"]["size_bytes"] == len(PENGUINS)


async def test_publish_problems(srv: Server) -> None:
    """Unknown format, taken slug, missing scope and anonymous publishing answer their codes."""
    status, body, _ = await call(
        srv, "POST", "/api/v1/datasets?organization=acme&format=docx", data=b"x"
    )
    assert (status, body["code"]) == (415, "unsupported_format")
    status, body, _ = await call(
        srv, "POST", "/api/v1/datasets?organization=acme&slug=penguins", data=PENGUINS
    )
    assert (status, body["code"]) == (409, "conflict")
    status, body, _ = await call(srv, "POST", "/api/v1/datasets?organization=acme", None, data=b"a")
    assert (status, body["code"]) == (401, "auth_required")
    status, body, _ = await call(srv, "POST", "/api/v1/datasets", data=b"")
    assert status == 400


async def test_declared_upload_over_the_limit_answers_413(srv: Server) -> None:
    """An upload whose Content-Length exceeds the configured maximum answers 413 at once."""
    app = create_app(srv.core, config=WebConfig(max_upload_bytes=1000))
    async with (
        running(app) as (url, http),
        http.post(
            f"{url}/api/v1/datasets?organization=acme", data=PENGUINS, headers=srv.auth("olivia")
        ) as response,
    ):
        assert response.status == 413
        assert (await response.json(content_type=None))["code"] == "payload_too_large"


async def test_list_filters_and_paginates(srv: Server) -> None:
    """The listing filters by q, tag and visibility and pages with next_cursor."""
    status, body, _ = await call(srv, "GET", "/api/v1/datasets?q=penguins", "mark")
    assert status == 200
    assert [d["id"] for d in body["items"]] == [srv.penguins.id]
    _, body, _ = await call(srv, "GET", "/api/v1/datasets?tag=birds", "mark")
    assert [d["id"] for d in body["items"]] == [srv.penguins.id]
    _, body, _ = await call(srv, "GET", "/api/v1/datasets?visibility=public", None)
    assert [d["id"] for d in body["items"]] == [srv.public.id]
    seen: list[str] = []
    cursor = None
    while True:
        path = "/api/v1/datasets?limit=1" + (f"&cursor={cursor}" if cursor else "")
        _, body, _ = await call(srv, "GET", path, "olivia")
        seen += [d["id"] for d in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([srv.penguins.id, srv.public.id, srv.private.id])
    status, body, _ = await call(srv, "GET", "/api/v1/datasets?cursor=forged", "olivia")
    assert (status, body["code"]) == (400, "bad_request")


async def test_patch_and_delete_need_the_owner(srv: Server) -> None:
    """The owner changes and deletes a dataset; a member gets 403; deleted is 404."""
    path = f"/api/v1/datasets/{srv.penguins.id}"
    status, body, _ = await call(srv, "PATCH", path, "mark", json={"title": "Mine"})
    assert (status, body["code"]) == (403, "forbidden")
    status, body, _ = await call(
        srv, "PATCH", path, json={"title": "Pygoscelis", "tags": ["x"], "visibility": "public"}
    )
    assert status == 200
    assert (body["title"], body["tags"], body["visibility"]) == ("Pygoscelis", ["x"], "public")
    status, body, _ = await call(srv, "PATCH", path, json={"colour": "red"})
    assert status == 400
    status, _, _ = await call(srv, "DELETE", path)
    assert status == 204
    status, body, _ = await call(srv, "GET", path)
    assert (status, body["code"]) == (404, "not_found")


async def test_replace_file_adds_a_version(srv: Server) -> None:
    """PUT file makes version 2; versions lists both; version=1 still downloads the old bytes."""
    path = f"/api/v1/datasets/{srv.penguins.id}"
    new = PENGUINS[: PENGUINS.index(b"\n", 5000) + 1]
    status, body, _ = await call(srv, "PUT", path + "/file", data=new)
    assert (status, body["version"]) == (200, 2)
    status, body, _ = await call(srv, "GET", path + "/versions", "mark")
    assert [v["version"] for v in body["items"]] == [1, 2]
    assert body["items"][1]["file"]["size_bytes"] == len(new)
    async with srv.http.get(
        f"{srv.url}{path}/download?version=1", headers=srv.auth("mark")
    ) as response:
        assert await response.read() == PENGUINS


async def test_grants_share_and_withdraw_a_private_dataset(srv: Server) -> None:
    """A grant lets an outsider see and download; withdrawing it hides the dataset again."""
    path = f"/api/v1/datasets/{srv.private.id}"
    status, body, _ = await call(
        srv, "POST", path + "/grants", json={"user": "oscar", "permission": "download"}
    )
    assert status == 201, body
    grant_id = body["id"]
    status, body, _ = await call(srv, "GET", path + "/grants")
    assert [g["id"] for g in body["items"]] == [grant_id]
    status, _, _ = await call(srv, "GET", path, "oscar")
    assert status == 200
    async with srv.http.get(f"{srv.url}{path}/download", headers=srv.auth("oscar")) as response:
        assert (response.status, await response.read()) == (200, PENGUINS)
    status, _, _ = await call(srv, "DELETE", f"{path}/grants/{grant_id}")
    assert status == 204
    status, _, _ = await call(srv, "GET", path, "oscar")
    assert status == 404
    status, body, _ = await call(srv, "POST", path + "/grants", json={"permission": "view"})
    assert status == 400


async def test_dataset_policy_tightens_and_refuses_loosening(srv: Server) -> None:
    """A dataset policy may restrict formats; one that loosens the organisation's is 400."""
    path = f"/api/v1/datasets/{srv.penguins.id}/download-policy"
    status, body, _ = await call(srv, "PUT", path, json={"allowed_formats": ["csv"]})
    assert status == 200, body
    assert body["effective"]["allowed_formats"] == ["csv"]
    status, body, _ = await call(srv, "GET", path, "mark")
    assert (status, body["allowed_formats"]) == (200, ["csv"])
    async with srv.http.get(
        f"{srv.url}/api/v1/datasets/{srv.penguins.id}/download?format=json",
        headers=srv.auth("mark"),
    ) as response:
        assert response.status == 403
        assert (await response.json(content_type=None))["code"] == "format_not_allowed"
    await call(
        srv, "PUT", "/api/v1/organizations/acme/download-policy", "ada",
        json={"allow_anonymous": False},
    )  # fmt: skip
    status, body, _ = await call(srv, "PUT", path, json={"allow_anonymous": True})
    assert (status, body["code"]) == (400, "bad_request")


async def test_stalled_upload_is_dropped_after_the_idle_timeout(srv: Server) -> None:
    """An upload that stops sending for longer than the idle timeout is refused, nothing kept."""
    app = create_app(srv.core, config=WebConfig(read_idle_timeout=0.2))
    async with running(app) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            (
                "POST /api/v1/datasets?organization=acme&slug=stalled HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {srv.keys['olivia']}\r\n"
                "Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n"
            ).encode()
            + PENGUINS[:1000]
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 400")
    principal = await srv.core.accounts.principal_for("olivia")
    page = await srv.core.datasets.list(principal)
    assert "stalled" not in [d.slug for d in page.items]


def test_runner_options_are_accepted_by_aiohttp(srv: Server) -> None:
    """RUNNER_OPTIONS (timeouts, header limits, no aiohttp access log) build a runner."""
    runner = web.AppRunner(create_app(srv.core), **RUNNER_OPTIONS)
    assert runner is not None


async def test_a_form_field_that_arrives_in_pieces_is_read_whole(srv: Server) -> None:
    """A multipart text field split across TCP reads is read whole, not a 500."""
    from urllib.parse import urlsplit

    description = "d" * 5000
    boundary = "datadlboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="description"\r\n\r\n'
        f"{description}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\na,b\r\n1,2\r\n\r\n--{boundary}--\r\n"
    ).encode()
    url = urlsplit(srv.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"POST /api/v1/datasets?organization=acme HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {srv.keys['olivia']}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    cut = body.index(b"ddd") + 2000
    writer.write(head + body[:cut])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[cut:])
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 201 " in status_line, answer[:500]
    created = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert created["description"] == description
