"""Dataset endpoints: publish (streamed), list, read, change, replace, delete, share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from datadl.domain.access import Principal
from datadl.domain.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedFormat
from datadl.domain.model import Dataset, DatasetStatus, FileFormat, Permission, Visibility
from datadl.entrypoints.web.auth import principal_of
from datadl.entrypoints.web.cache import READ_CACHE
from datadl.entrypoints.web.config import CONFIG, DATADL
from datadl.entrypoints.web.render import (
    API,
    dataset_json,
    grant_json,
    json_response,
    only_keys,
    override_from,
    policy_json,
    read_json,
    typed,
    version_json,
)
from datadl.services.datasets import DatasetChanges, DatasetFacts
from datadl.wiring import Datadl

CHUNK = 256 * 1024
_FIELD_CHUNK = 8192
_FIELD_MAX = 64 * 1024
_FACT_FIELDS = (
    "organization",
    "slug",
    "title",
    "description",
    "visibility",
    "tags",
    "license",
    "filename",
    "format",
)


async def render_dataset(app: Datadl, dataset: Dataset) -> dict[str, Any]:
    """The Dataset JSON, naming the organisation by slug and the owner by user name."""
    try:
        org = (await app.catalog.get_organization(dataset.organization_id)).slug
    except NotFound:
        org = dataset.organization_id
    try:
        owner = (await app.catalog.get_user(dataset.owner_id)).name
    except NotFound:
        owner = dataset.owner_id
    return dataset_json(dataset, organization=org, owner=owner)


def _format(value: str | None, content_type: str | None) -> FileFormat | None:
    if value:
        try:
            return FileFormat(value.lower())
        except ValueError:
            raise UnsupportedFormat(f"Unknown input format {value!r}.") from None
    if content_type and content_type not in ("application/octet-stream", "multipart/form-data"):
        return FileFormat.from_media_type(content_type)
    return None


def _visibility(value: str | None) -> Visibility | None:
    if value is None or value == "":
        return None
    try:
        return Visibility(value)
    except ValueError:
        raise BadRequest(
            f"Unknown visibility {value!r}.", hint="Use private, organization or public."
        ) from None


def _tags(value: str | None) -> tuple[str, ...]:
    return tuple(t for t in (value or "").split(",") if t.strip())


def _check_declared_size(request: web.Request) -> None:
    limit = request.app[CONFIG].max_upload_bytes
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes.")


async def _timed(chunks: AsyncIterator[bytes], idle: float) -> AsyncIterator[bytes]:
    """Pass chunks on; a client that sends nothing for ``idle`` seconds is dropped."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BadRequest(
                "The upload stalled.", hint="Send the body without long pauses."
            ) from None
        yield chunk


async def _raw_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


def _bad_form(exc: Exception) -> BadRequest:
    return BadRequest(
        "The multipart/form-data body is malformed.",
        hint="Send a form with a boundary and well-formed parts, or the raw file as the body.",
    )


async def _part_body(part: BodyPartReader, reader: MultipartReader) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await part.read_chunk(CHUNK)
            if not chunk:
                # A body that ends without the part's closing boundary is a cut upload:
                # never publish what arrived of it as if it were the file.
                await reader.next()
        except (ValueError, HttpProcessingError) as exc:
            raise _bad_form(exc) from None
        if not chunk:
            return
        yield chunk


async def _upload(
    request: web.Request,
) -> tuple[dict[str, str], AsyncIterator[bytes], str | None]:
    """The fact fields (query, then form fields before ``file``), the file stream, its type.

    A multipart upload must send its text fields before the ``file`` field: the file
    streams to storage as it arrives, so fields after it cannot change it.
    """
    _check_declared_size(request)
    idle = request.app[CONFIG].read_idle_timeout
    fields = {k: v for k, v in request.query.items() if k in _FACT_FIELDS}
    if request.content_type != "multipart/form-data":
        return fields, _timed(_raw_body(request), idle), request.content_type
    reader: MultipartReader | None = None
    while True:
        try:
            if reader is None:
                reader = await request.multipart()
            part = await reader.next()
        except (ValueError, HttpProcessingError) as exc:
            raise _bad_form(exc) from None
        if part is None:
            raise BadRequest("The form has no 'file' field.", hint="Add the file as field 'file'.")
        if not isinstance(part, BodyPartReader):
            raise BadRequest("Nested multipart bodies are not supported.", hint="Flatten the form.")
        if part.name == "file":
            if part.filename and "filename" not in fields:
                fields["filename"] = part.filename
            part_type = part.headers.get("Content-Type")
            return fields, _timed(_part_body(part, reader), idle), part_type
        if part.name in _FACT_FIELDS:
            raw = bytearray()
            try:
                # read_chunk returns what has arrived so far: a field may come in pieces.
                while chunk := await part.read_chunk(_FIELD_CHUNK):
                    raw += chunk
                    if len(raw) > _FIELD_MAX:
                        raise BadRequest(
                            f"The field {part.name!r} is too long.", hint="Shorten it."
                        )
            except (ValueError, HttpProcessingError) as exc:
                raise _bad_form(exc) from None
            fields[part.name] = raw.decode("utf-8", "replace")
        else:
            raise BadRequest(
                f"Unknown form field {part.name!r}.",
                hint="Fields: file, " + ", ".join(_FACT_FIELDS) + ".",
            )


def _default_organization(principal: Principal) -> str:
    orgs = sorted(principal.organization_ids)
    if len(orgs) == 1:
        return orgs[0]
    raise BadRequest(
        "Say which organisation publishes the dataset.", hint="Add ?organization=<slug>."
    )


async def publish(request: web.Request) -> web.Response:
    """POST /api/v1/datasets."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    fields, stream, content_type = await _upload(request)
    facts = DatasetFacts(
        organization=fields.get("organization") or _default_organization(principal),
        filename=fields.get("filename") or None,
        format=_format(fields.get("format"), content_type),
        slug=fields.get("slug") or None,
        title=fields.get("title") or None,
        description=fields.get("description", ""),
        visibility=_visibility(fields.get("visibility")) or Visibility.PRIVATE,
        tags=_tags(fields.get("tags")),
        license=fields.get("license") or None,
    )
    dataset = await app.datasets.publish(principal, facts, stream)
    return json_response(
        await render_dataset(app, dataset),
        status=201,
        headers={"Location": f"{API}/datasets/{dataset.id}"},
    )


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 6:
        raise BadRequest("limit must be a positive integer.", hint=f"Use ?limit={default}.")
    return int(raw)


async def list_datasets(request: web.Request) -> web.Response:
    """GET /api/v1/datasets."""
    app = request.app[DATADL]
    q = request.query
    page = await app.datasets.list(
        await principal_of(request),
        text=q.get("q") or None,
        organization=q.get("organization") or None,
        tag=q.get("tag") or None,
        visibility=_visibility(q.get("visibility")),
        limit=_limit(request, 20),
        cursor=q.get("cursor") or None,
    )
    items = [await render_dataset(app, d) for d in page.items]
    return json_response({"items": items, "next_cursor": page.next_cursor})


async def get_dataset(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    dataset_id = request.match_info["dataset_id"]
    cache = request.app[READ_CACHE]
    cached = cache.dataset(dataset_id, principal)
    if cached is not None:
        return web.Response(body=cached, content_type="application/json", charset="utf-8")
    dataset = await app.datasets.get(principal, dataset_id)
    response = json_response(await render_dataset(app, dataset))
    # A dataset under analysis changes without a request; only settled ones are kept.
    if dataset.status is not DatasetStatus.ANALYZING and isinstance(response.body, bytes):
        cache.remember_dataset(dataset_id, principal, response.body)
    return response


async def update_dataset(request: web.Request) -> web.Response:
    """PATCH /api/v1/datasets/{id}."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    body = await read_json(request)
    only_keys(body, ("title", "description", "tags", "license", "visibility"))
    tags = typed(body, "tags", list)
    if tags is not None and not all(isinstance(t, str) for t in tags):
        raise BadRequest("tags must be a list of strings.", hint='Use ["a", "b"].')
    changes = DatasetChanges(
        title=typed(body, "title", str),
        description=typed(body, "description", str),
        tags=None if tags is None else tuple(tags),
        license=typed(body, "license", str),
        visibility=_visibility(typed(body, "visibility", str)),
    )
    dataset = await app.datasets.update(principal, request.match_info["dataset_id"], changes)
    return json_response(await render_dataset(app, dataset))


async def replace_file(request: web.Request) -> web.Response:
    """PUT /api/v1/datasets/{id}/file."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    fields, stream, content_type = await _upload(request)
    dataset = await app.datasets.replace_file(
        principal,
        request.match_info["dataset_id"],
        stream,
        filename=fields.get("filename") or None,
        format=_format(fields.get("format"), content_type),
    )
    return json_response(await render_dataset(app, dataset))


async def delete_dataset(request: web.Request) -> web.Response:
    """DELETE /api/v1/datasets/{id}."""
    app = request.app[DATADL]
    await app.datasets.delete(await principal_of(request), request.match_info["dataset_id"])
    return web.Response(status=204)


async def list_versions(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/versions."""
    app = request.app[DATADL]
    versions = await app.datasets.versions(
        await principal_of(request), request.match_info["dataset_id"]
    )
    return json_response({"items": [version_json(v) for v in versions]})


async def list_grants(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/grants."""
    app = request.app[DATADL]
    grants = await app.datasets.grants(
        await principal_of(request), request.match_info["dataset_id"]
    )
    return json_response({"items": [grant_json(g) for g in grants]})


def _datetime(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an RFC 3339 timestamp.", hint="2026-12-31T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name} must be an RFC 3339 timestamp.", hint="2026-12-31T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone.", hint="End it with Z.")
    return parsed


async def add_grant(request: web.Request) -> web.Response:
    """POST /api/v1/datasets/{id}/grants."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    body = await read_json(request)
    only_keys(body, ("user", "organization", "permission", "expires_at"))
    try:
        permission = Permission(typed(body, "permission", str) or "view")
    except ValueError:
        raise BadRequest("permission must be view or download.", hint='Use "download".') from None
    grant = await app.datasets.add_grant(
        principal,
        request.match_info["dataset_id"],
        permission=permission,
        user=typed(body, "user", str),
        organization=typed(body, "organization", str),
        expires_at=_datetime(body.get("expires_at"), "expires_at"),
    )
    return json_response(
        grant_json(grant),
        status=201,
        headers={"Location": f"{API}/datasets/{grant.dataset_id}/grants/{grant.id}"},
    )


async def delete_grant(request: web.Request) -> web.Response:
    """DELETE /api/v1/datasets/{id}/grants/{grant_id}."""
    app = request.app[DATADL]
    await app.datasets.remove_grant(
        await principal_of(request),
        request.match_info["dataset_id"],
        request.match_info["grant_id"],
    )
    return web.Response(status=204)


async def get_dataset_policy(request: web.Request) -> web.Response:
    """GET /api/v1/datasets/{id}/download-policy: its own fields and the effective policy."""
    app = request.app[DATADL]
    own, effective = await app.datasets.dataset_policy(
        await principal_of(request), request.match_info["dataset_id"]
    )
    body = policy_json(own) if own is not None else {}
    body["effective"] = policy_json(effective)
    return json_response(body)


async def set_dataset_policy(request: web.Request) -> web.Response:
    """PUT /api/v1/datasets/{id}/download-policy."""
    app = request.app[DATADL]
    principal = await principal_of(request)
    override = override_from(await read_json(request, allow_null=True))
    effective = await app.datasets.set_dataset_policy(
        principal, request.match_info["dataset_id"], override
    )
    body = policy_json(override) if override is not None else {}
    body["effective"] = policy_json(effective)
    return json_response(body)
