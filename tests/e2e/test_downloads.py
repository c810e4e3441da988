"""Downloads over HTTP: headers, ranges, preconditions, HEAD, tokens, privacy, accounting."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from datadl.domain.model import Visibility
from datadl.entrypoints.web import WebConfig, create_app
from datadl.entrypoints.web.downloads import content_disposition
from tests.e2e.conftest import (
    PENGUINS,
    Server,
    give_users_a_quota,
    raw_connection,
    raw_get,
    running,
    settled_record,
    start_raw_download,
    user_bytes_used,
)

SIZE = len(PENGUINS)
VOLATILE = {"date", "x-request-id", "x-download-id", "server"}


async def get(
    srv: Server, url: str, who: str | None = "mark", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    if who is not None:
        headers.update(srv.auth(who))
    async with srv.http.get(url, headers=headers) as response:
        return response.status, response.headers.copy(), await response.read()


async def problem(srv: Server, url: str, who: str | None = "mark", **headers: str) -> Any:
    status, got, body = await get(srv, url, who, **headers)
    assert got["Content-Type"] == "application/problem+json"
    document = json.loads(body)
    assert document["status"] == status
    return document


async def test_full_download_carries_every_promised_header(srv: Server) -> None:
    """A 200 carries the exact bytes and every header API.md lists for the original format."""
    status, headers, body = await get(srv, srv.download_url(srv.penguins))
    assert (status, body) == (200, PENGUINS)
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Content-Type"] == "text/csv"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Cache-Control"] == "private"
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith("W/")
    assert headers["Last-Modified"].endswith("GMT")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"penguins.csv\"; filename*=UTF-8''penguins.csv"
    )
    digest = base64.b64encode(hashlib.sha256(PENGUINS).digest()).decode()
    assert headers["Repr-Digest"] == f"sha-256=:{digest}:"
    record = await srv.core.audit_log.get(headers["X-Download-Id"])
    assert (record.status.value, record.bytes_sent) == ("completed", SIZE)


async def test_download_id_shows_progress_of_the_record(srv: Server) -> None:
    """X-Download-Id names a record that GET /api/v1/downloads/{id} shows to its downloader."""
    _, headers, _ = await get(srv, srv.download_url(srv.penguins))
    download_id = headers["X-Download-Id"]
    async with srv.http.get(
        f"{srv.url}/api/v1/downloads/{download_id}", headers=srv.auth("mark")
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "completed"
    assert (body["bytes_sent"], body["bytes_total"], body["format"]) == (SIZE, SIZE, "original")
    async with srv.http.get(
        f"{srv.url}/api/v1/downloads/{download_id}", headers=srv.auth("oscar")
    ) as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=15000-", 15000, SIZE - 1), ("bytes=-41", SIZE - 41, SIZE - 1)],
)
async def test_single_range_answers_206_with_content_range(
    srv: Server, spec: str, start: int, end: int
) -> None:
    """bytes=a-b, a- and -n answer 206 with that slice and its Content-Range."""
    status, headers, body = await get(srv, srv.download_url(srv.penguins), Range=spec)
    assert status == 206
    assert body == PENGUINS[start : end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["Content-Length"] == str(end - start + 1)


async def test_several_ranges_answer_multipart_byteranges(srv: Server) -> None:
    """Two disjoint ranges answer multipart/byteranges with one framed part each."""
    status, headers, body = await get(
        srv, srv.download_url(srv.penguins), Range="bytes=0-9,100-109"
    )
    assert status == 206
    assert headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert headers["Content-Length"] == str(len(body))
    boundary = headers["Content-Type"].split("boundary=", 1)[1].strip('"').encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    assert len(parts) == 2
    head0, payload0 = parts[0].split(b"\r\n\r\n", 1)
    head1, payload1 = parts[1].split(b"\r\n\r\n", 1)
    assert f"Content-Range: bytes 0-9/{SIZE}".encode() in head0
    assert f"Content-Range: bytes 100-109/{SIZE}".encode() in head1
    assert payload0.rstrip(b"\r\n") == PENGUINS[0:10]
    assert payload1.rstrip(b"\r\n") == PENGUINS[100:110]


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", "bytes=-0", f"bytes={SIZE + 5}-{SIZE + 9}"])
async def test_unsatisfiable_range_answers_416_with_size(srv: Server, spec: str) -> None:
    """A range outside the file answers 416 problem+json with Content-Range: bytes */size."""
    status, headers, body = await get(srv, srv.download_url(srv.penguins), Range=spec)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert json.loads(body)["code"] == "range_not_satisfiable"


async def test_if_none_match_answers_304_without_body(srv: Server) -> None:
    """A matching If-None-Match answers 304 with the ETag and no body."""
    _, first, _ = await get(srv, srv.download_url(srv.penguins))
    status, headers, body = await get(
        srv, srv.download_url(srv.penguins), **{"If-None-Match": first["ETag"]}
    )
    assert (status, body) == (304, b"")
    assert headers["ETag"] == first["ETag"]


async def test_if_modified_since_answers_304_and_an_older_date_200(srv: Server) -> None:
    """If-Modified-Since at Last-Modified answers 304; a date before it answers 200."""
    _, first, _ = await get(srv, srv.download_url(srv.penguins))
    status, _, _ = await get(
        srv, srv.download_url(srv.penguins), **{"If-Modified-Since": first["Last-Modified"]}
    )
    assert status == 304
    status, _, body = await get(
        srv,
        srv.download_url(srv.penguins),
        **{"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
    )
    assert (status, body) == (200, PENGUINS)


async def test_if_match_mismatch_answers_412(srv: Server) -> None:
    """If-Match with another ETag answers 412 precondition_failed."""
    doc = await problem(srv, srv.download_url(srv.penguins), **{"If-Match": '"other"'})
    assert (doc["status"], doc["code"]) == (412, "precondition_failed")


async def test_if_range_with_current_etag_or_date_honours_the_range(srv: Server) -> None:
    """If-Range naming the current ETag or Last-Modified keeps the range (206)."""
    _, first, _ = await get(srv, srv.download_url(srv.penguins))
    for validator in (first["ETag"], first["Last-Modified"]):
        status, _, body = await get(
            srv, srv.download_url(srv.penguins), Range="bytes=0-9", **{"If-Range": validator}
        )
        assert (status, body) == (206, PENGUINS[:10])


async def test_stale_if_range_after_a_new_version_answers_the_new_full_body(srv: Server) -> None:
    """After a new version, If-Range with the old ETag answers 200 with the whole new file."""
    _, first, _ = await get(srv, srv.download_url(srv.penguins))
    new = PENGUINS.replace(b"Adelie", b"ADELIE")
    async with srv.http.put(
        f"{srv.url}/api/v1/datasets/{srv.penguins.id}/file?filename=penguins.csv",
        data=new,
        headers={**srv.auth("olivia"), "Content-Type": "text/csv"},
    ) as response:
        assert response.status == 200
        assert (await response.json())["version"] == 2
    status, headers, body = await get(
        srv, srv.download_url(srv.penguins), Range="bytes=0-9", **{"If-Range": first["ETag"]}
    )
    assert (status, body) == (200, new)
    assert headers["ETag"] != first["ETag"]
    assert "Content-Range" not in headers


async def test_head_has_the_headers_of_get_and_no_body(srv: Server) -> None:
    """HEAD answers the same status and headers as GET (but the record id) and no body."""
    for extra in ({}, {"Range": "bytes=5-9"}):
        _, got, _ = await get(srv, srv.download_url(srv.penguins), **extra)
        async with srv.http.head(
            srv.download_url(srv.penguins), headers={**srv.auth("mark"), **extra}
        ) as response:
            head = response.headers.copy()
            assert await response.read() == b""
            assert response.status == (206 if extra else 200)
        assert {k.lower(): v for k, v in head.items() if k.lower() not in VOLATILE} == {
            k.lower(): v for k, v in got.items() if k.lower() not in VOLATILE
        }


async def test_private_dataset_answers_the_same_404_as_a_missing_one(srv: Server) -> None:
    """A dataset the principal may not see is indistinguishable from one that does not exist."""
    for who in ("oscar", "mark", None):
        for suffix in ("", "/download", "/versions"):
            hidden = await problem(srv, f"{srv.url}/api/v1/datasets/{srv.private.id}{suffix}", who)
            missing = await problem(srv, f"{srv.url}/api/v1/datasets/nosuchdataset{suffix}", who)
            assert hidden["status"] in (401, 404)
            assert hidden == missing


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/datasets/..%2F..%2Fetc/download",
        "/api/v1/datasets/%2e%2e%2f%2e%2e%2fetc%2fpasswd/download",
        "/api/v1/datasets/..%5C..%5Cwindows/download",
        "/api/v1/datasets/%252e%252e%252fetc/download",
    ],
)
async def test_traversal_attempts_answer_4xx(srv: Server, path: str) -> None:
    """Encoded traversal in the dataset id reaches no file: a 4xx problem, no file bytes."""
    url = URL(srv.url + path, encoded=True)
    async with srv.http.get(url, headers=srv.auth("mark")) as response:
        body = await response.read()
        assert 400 <= response.status < 500
        assert b"root:" not in body


async def issue(srv: Server, dataset_id: str, who: str = "mark", **body: Any) -> dict[str, Any]:
    async with srv.http.post(
        f"{srv.url}/api/v1/datasets/{dataset_id}/download-token", json=body, headers=srv.auth(who)
    ) as response:
        assert response.status == 201, await response.text()
        return dict(await response.json())


async def test_token_url_downloads_with_no_other_credential(srv: Server) -> None:
    """The url of a new token is absolute and downloads the file with no other credential."""
    token = await issue(srv, srv.penguins.id, expires_in=600, max_uses=3)
    assert token["url"].startswith(srv.url + "/api/v1/datasets/")
    assert token["max_uses"] == 3
    status, headers, body = await get(srv, token["url"], None)
    assert (status, body) == (200, PENGUINS)
    record = await srv.core.audit_log.get(headers["X-Download-Id"])
    assert record.channel.value == "token"


async def test_tampered_expired_foreign_and_revoked_tokens_answer_their_codes(srv: Server) -> None:
    """Each bad token answers 403 with its own code and never the file."""
    token = await issue(srv, srv.penguins.id, expires_in=60, max_uses=5)
    raw = token["token"]
    tampered = raw[:-2] + ("AA" if not raw.endswith("AA") else "BB")
    base = srv.download_url(srv.penguins)
    doc = await problem(srv, f"{base}?token={tampered}", None)
    assert (doc["status"], doc["code"]) == (403, "token_invalid")
    foreign = await problem(srv, f"{srv.download_url(srv.public)}?token={raw}", None)
    assert (foreign["status"], foreign["code"]) == (403, "token_invalid")
    other_format = await problem(srv, f"{base}?format=csv&token={raw}", None)
    assert other_format["code"] == "token_invalid"
    srv.clock.advance(61)
    expired = await problem(srv, f"{base}?token={raw}", None)
    assert (expired["status"], expired["code"]) == (403, "token_expired")
    fresh = await issue(srv, srv.penguins.id)
    async with srv.http.delete(
        f"{srv.url}/api/v1/download-tokens/{fresh['token_id']}", headers=srv.auth("mark")
    ) as response:
        assert response.status == 204
    revoked = await problem(srv, f"{base}?token={fresh['token']}", None)
    assert revoked["code"] == "token_invalid"


async def test_token_lifetime_is_capped_by_policy(srv: Server) -> None:
    """expires_in beyond the policy's token_max_ttl_seconds is cut to the cap."""
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"token_max_ttl_seconds": 120},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200
    token = await issue(srv, srv.penguins.id, expires_in=86_400)
    assert token["expires_at"] == "2026-11-25T12:02:00Z"


@pytest.mark.parametrize(
    ("name", "ascii_name", "utf8"),
    [
        ('we"ird.csv', "we_ird.csv", "we%22ird.csv"),
        ("evil\r\nSet-Cookie: x=1.csv", "evilSet-Cookie_ x_1.csv", "evilSet-Cookie%3A%20x%3D1.csv"),
        ("données 数据.csv", "donnees.csv", "donn%C3%A9es%20%E6%95%B0%E6%8D%AE.csv"),
        ("数据.csv", "download.csv", "%E6%95%B0%E6%8D%AE.csv"),
        ("../../etc/passwd", "download.etc_passwd", "_.._etc_passwd"),
    ],
)
def test_content_disposition_is_safe_for_any_name(name: str, ascii_name: str, utf8: str) -> None:
    """Quotes, CR/LF, separators and non-ASCII never reach the header unescaped."""
    value = content_disposition(name)
    assert value == f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8}"
    assert value.isascii() and "\r" not in value and "\n" not in value


async def test_content_disposition_of_a_hostile_published_name(srv: Server) -> None:
    """A dataset published with quotes, CR/LF and non-ASCII in its name downloads safely."""
    dataset = await srv.publish(
        "olivia", PENGUINS, filename='ré"sumé\r\nX-Evil: 1.csv', visibility=Visibility.PUBLIC
    )
    status, headers, _ = await get(srv, srv.download_url(dataset))
    assert status == 200
    assert "X-Evil" not in headers
    value = headers["Content-Disposition"]
    assert value.startswith('attachment; filename="re_sume')
    encoded = value.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded).startswith('ré"sumé')


async def test_anonymous_downloads_public_only_when_policy_allows(srv: Server) -> None:
    """Anonymous may download a public dataset by default and gets 401 once the policy forbids."""
    status, _, body = await get(srv, srv.download_url(srv.public), None)
    assert (status, body) == (200, PENGUINS)
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"allow_anonymous": False},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200
    status, headers, body = await get(srv, srv.download_url(srv.public), None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["code"] == "auth_required"


async def test_quota_exceeded_answers_429_with_retry_after_and_resets_at(srv: Server) -> None:
    """Past the user's daily download quota the answer is 429 quota_exceeded with Retry-After."""
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"quota": {"user": {"bytes": None, "downloads": 1, "window": "day"}}},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200
    status, _, _ = await get(srv, srv.download_url(srv.penguins))
    assert status == 200
    status, headers, body = await get(srv, srv.download_url(srv.public))
    doc = json.loads(body)
    assert (status, doc["code"]) == (429, "quota_exceeded")
    assert int(headers["Retry-After"]) > 0
    assert doc["resets_at"] == "2026-11-26T00:00:00Z"
    assert doc["hint"]


async def test_rate_limit_fields_and_429_rate_limited(srv: Server) -> None:
    """A rate-limited download carries RateLimit fields; past the limit 429 with Retry-After."""
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"rate_limit": {"requests": 2, "per_seconds": 60}},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200
    status, headers, _ = await get(srv, srv.download_url(srv.penguins))
    assert status == 200
    assert headers["RateLimit-Policy"] == '"default";q=2;w=60'
    assert headers["RateLimit"].startswith('"default";r=1;')
    await get(srv, srv.download_url(srv.penguins))
    status, headers, body = await get(srv, srv.download_url(srv.penguins))
    assert (status, json.loads(body)["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit"].startswith('"default";r=0;')


async def test_client_disconnect_records_abort_and_settles_bytes_sent(srv: Server) -> None:
    """A client that hangs up mid-stream leaves an aborted record; the quota holds its bytes."""
    await give_users_a_quota(srv)
    big = b"a,b\n" + b"1234567,abcdefgh\n" * 3_000_000  # about 51 MB
    dataset = await srv.publish("olivia", big, filename="big.csv", visibility=Visibility.PUBLIC)
    download = await start_raw_download(URL(srv.download_url(dataset)), srv.auth("mark"))
    assert download.head.startswith(b"HTTP/1.1 200")
    await download.reader.readexactly(100_000)
    sock = download.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    download.writer.close()
    record = await settled_record(srv, download.download_id, tries=200)
    assert record.status.value == "aborted"
    assert 100_000 <= record.bytes_sent < len(big)
    assert await user_bytes_used(srv, "mark") == record.bytes_sent


async def test_a_client_that_hangs_up_after_the_last_byte_leaves_a_completed_record(
    srv: Server,
) -> None:
    """Settling a finished download survives the client closing at once (curl does): the
    handler is cancelled mid-settlement, the record still ends completed, quota settled."""
    await give_users_a_quota(srv)
    usage = srv.core.downloads._usage
    real_settle = usage.settle

    async def slow_settle(reservation_id: str, bytes_sent: int) -> bool:
        await asyncio.sleep(0.3)  # the client is gone before this returns
        return await real_settle(reservation_id, bytes_sent)

    usage.settle = slow_settle  # type: ignore[method-assign]
    download = await start_raw_download(URL(srv.download_url(srv.public)), srv.auth("mark"))
    assert download.head.startswith(b"HTTP/1.1 200")
    assert await download.reader.readexactly(len(PENGUINS)) == PENGUINS
    download.writer.close()
    record = await settled_record(srv, download.download_id)
    assert (record.status.value, record.bytes_sent) == ("completed", len(PENGUINS))
    assert await user_bytes_used(srv, "mark") == len(PENGUINS)


async def test_a_client_gone_before_the_first_byte_is_recorded_and_charged_nothing(
    srv: Server,
) -> None:
    """Hanging up while the server prepares the download (after its quota reservation)
    undoes the reservation and leaves one aborted record with no bytes."""
    await give_users_a_quota(srv)
    catalog = srv.core.downloads._catalog
    real_count = catalog.increment_download_count
    waiting = asyncio.Event()

    async def slow_count(dataset_id: str) -> None:
        waiting.set()
        await asyncio.sleep(0.5)  # the client hangs up meanwhile
        await real_count(dataset_id)

    catalog.increment_download_count = slow_count  # type: ignore[method-assign]
    url = URL(srv.download_url(srv.public))
    _reader, writer = await raw_connection(url)
    writer.write(raw_get(url, srv.auth("mark")))
    await writer.drain()
    await asyncio.wait_for(waiting.wait(), 5)
    writer.close()
    for _ in range(100):
        records = await srv.core.audit.history(
            await srv.core.accounts.principal_for("olivia"), srv.public.id
        )
        if records.items:
            break
        await asyncio.sleep(0.05)
    (record,) = records.items
    assert (record.status.value, record.bytes_sent) == ("aborted", 0)
    assert await user_bytes_used(srv, "mark") == 0


async def test_converted_format_downloads_and_resumes(srv: Server) -> None:
    """A converted format carries Content-Length and ETag and serves ranges of the same bytes."""
    url = srv.download_url(srv.penguins) + "?format=jsonl"
    status, headers, body = await get(srv, url)
    assert status == 200, body[:300]
    assert headers["Content-Length"] == str(len(body))
    assert "Repr-Digest" not in headers
    first = json.loads(body.split(b"\n", 1)[0])
    assert first["species"] == "Adelie"
    status, _, part = await get(srv, url, Range="bytes=10-", **{"If-Range": headers["ETag"]})
    assert (status, part) == (206, body[10:])


async def test_unknown_format_answers_a_problem(srv: Server) -> None:
    """An unknown ?format= answers unsupported_format."""
    doc = await problem(srv, srv.download_url(srv.penguins) + "?format=exe")
    assert doc["code"] == "unsupported_format"


async def test_many_ranges_answer_the_whole_file(srv: Server) -> None:
    """More ranges than the cap answer 200 with the whole file, not a huge multipart body."""
    spec = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(200))
    status, headers, body = await get(srv, srv.download_url(srv.penguins), Range=spec)
    assert (status, body) == (200, PENGUINS)
    assert "Content-Range" not in headers


async def test_missing_stored_file_answers_file_missing(srv: Server) -> None:
    """A stored file that vanished answers file_missing (410) with a hint, never bytes."""
    srv.blob_path(srv.penguins).unlink()
    doc = await problem(srv, srv.download_url(srv.penguins))
    assert (doc["status"], doc["code"]) == (410, "file_missing")
    assert doc["hint"]
    assert str(srv.blob_root) not in json.dumps(doc)


async def test_truncated_stored_file_answers_file_corrupted(srv: Server) -> None:
    """A stored file of the wrong size answers 500 file_corrupted and flags the dataset."""
    path = srv.blob_path(srv.penguins)
    path.write_bytes(PENGUINS[:-10])
    doc = await problem(srv, srv.download_url(srv.penguins))
    assert (doc["status"], doc["code"]) == (500, "file_corrupted")
    assert "stored size" not in json.dumps(doc)
    flagged = await srv.core.catalog.get_dataset(srv.penguins.id)
    assert flagged.corrupted_reason


async def test_altered_stored_bytes_break_the_transfer(srv: Server) -> None:
    """Same-size altered bytes never arrive whole: the transfer breaks short of its length."""
    path = srv.blob_path(srv.penguins)
    path.write_bytes(PENGUINS.replace(b"Adelie", b"Adelia"))
    async with srv.http.get(srv.download_url(srv.penguins), headers=srv.auth("mark")) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    flagged = await srv.core.catalog.get_dataset(srv.penguins.id)
    assert flagged.corrupted_reason


async def test_token_issuance_carries_rate_limit_fields(srv: Server) -> None:
    """Issuing a token counts against the rate limit and says so in RateLimit fields."""
    async with srv.http.put(
        f"{srv.url}/api/v1/organizations/acme/download-policy",
        json={"rate_limit": {"requests": 5, "per_seconds": 60}},
        headers=srv.auth("ada"),
    ) as response:
        assert response.status == 200
    async with srv.http.post(
        f"{srv.url}/api/v1/datasets/{srv.penguins.id}/download-token",
        json={},
        headers=srv.auth("mark"),
    ) as response:
        assert response.status == 201
        assert response.headers["RateLimit-Policy"] == '"default";q=5;w=60'
        assert response.headers["RateLimit"].startswith('"default";r=4;')
        assert response.headers["Cache-Control"] == "no-store"


async def test_silent_client_is_dropped_after_the_write_timeout(srv: Server) -> None:
    """A client that stops reading shows live progress, then is aborted after the write timeout."""
    big = b"a,b\n" + b"1234567,abcdefgh\n" * 3_000_000
    dataset = await srv.publish("olivia", big, filename="big.csv", visibility=Visibility.PUBLIC)
    app = create_app(srv.core, config=WebConfig(write_timeout=1.0))
    async with running(app) as (base, http):
        url = URL(f"{base}/api/v1/datasets/{dataset.id}/download")
        download = await start_raw_download(url, small_buffer=True)
        try:
            async with http.get(f"{base}/api/v1/downloads/{download.download_id}") as response:
                live = await response.json()
            assert live["status"] == "started"
            assert 0 < live["bytes_sent"] < len(big)
            record = await settled_record(srv, download.download_id, pause=0.1)
        finally:
            download.writer.close()
    assert record.status.value == "aborted"
    assert record.bytes_sent < len(big)


async def test_each_refused_attempt_writes_one_denied_record(srv: Server) -> None:
    """A 416 and a 412 each leave exactly one denied record naming their code."""
    await get(srv, srv.download_url(srv.penguins), Range=f"bytes={SIZE}-")
    await get(srv, srv.download_url(srv.penguins), **{"If-Match": '"x"'})
    principal = await srv.core.accounts.principal_for("olivia")
    page = await srv.core.audit.history(principal, srv.penguins.id)
    assert sorted((r.status.value, r.denial_code) for r in page.items) == [
        ("denied", "precondition_failed"),
        ("denied", "range_not_satisfiable"),
    ]
