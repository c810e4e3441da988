"""The OpenAPI 3.1 document, generated from the route table, and an offline page rendering it."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

import datadl
from datadl.domain.model import FileFormat
from datadl.entrypoints.web.routing import Route

PROBLEM = "application/problem+json"


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_STR, _INT, _BOOL, _NUM = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "boolean"},
    {"type": "number"},
)
_TIME = {"type": "string", "format": "date-time"}
_NTIME = {"type": ["string", "null"], "format": "date-time"}


def _obj(props: dict[str, Any], required: Sequence[str] = (), extra: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_QUOTA = {
    "type": ["object", "null"],
    "properties": {
        "bytes": _nullable("integer"),
        "downloads": _nullable("integer"),
        "window": {"type": "string", "enum": ["day", "month"]},
    },
}
_POLICY_PROPS: dict[str, Any] = {
    "allowed_formats": {"type": ["array", "null"], "items": _STR},
    "max_download_bytes": _nullable("integer"),
    "allow_anonymous": _nullable("boolean"),
    "require_token": _nullable("boolean"),
    "token_max_ttl_seconds": _nullable("integer"),
    "terms": _nullable("string"),
    "rate_limit": {
        "type": ["object", "null"],
        "properties": {"requests": _INT, "per_seconds": _NUM},
    },
    "quota": {"type": ["object", "null"], "properties": {"user": _QUOTA, "organization": _QUOTA}},
    "audit_retention_days": _nullable("integer"),
    "neutralize_formulas": _nullable("boolean"),
}
_FILE = _obj(
    {"format": _STR, "size_bytes": _INT, "sha256": _STR, "media_type": _STR, "filename": _STR}
)
_RECORD = _obj(
    {
        "id": _STR,
        "dataset_id": _STR,
        "version": _nullable("integer"),
        "format": _STR,
        "status": {
            "type": "string",
            "enum": ["denied", "started", "completed", "aborted", "failed"],
        },
        "channel": _STR,
        "range": _nullable("string"),
        "bytes_sent": _INT,
        "bytes_total": _nullable("integer"),
        "started_at": _TIME,
        "finished_at": _NTIME,
        "denial_code": _nullable("string"),
    },
    ["id", "status", "bytes_sent", "started_at", "format"],
)

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {
            "type": _STR,
            "title": _STR,
            "status": _INT,
            "code": _STR,
            "detail": _STR,
            "hint": _STR,
            "retry_after": _INT,
            "resets_at": _TIME,
        },
        ["type", "title", "status", "code", "detail", "hint"],
    ),
    "Dataset": _obj(
        {
            "id": _STR,
            "slug": _STR,
            "title": _STR,
            "description": _STR,
            "organization": _STR,
            "owner": _STR,
            "visibility": {"type": "string", "enum": ["private", "organization", "public"]},
            "tags": {"type": "array", "items": _STR},
            "license": _nullable("string"),
            "version": _INT,
            "status": {"type": "string", "enum": ["analyzing", "ready", "failed"]},
            "file": _FILE,
            "row_count": _nullable("integer"),
            "column_count": _nullable("integer"),
            "download_count": _INT,
            "created_at": _TIME,
            "updated_at": _TIME,
            "links": {"type": "object", "additionalProperties": _STR},
        },
        ["id", "slug", "title", "organization", "visibility", "version", "status", "file"],
    ),
    "DatasetList": _obj(
        {"items": {"type": "array", "items": _ref("Dataset")}, "next_cursor": _nullable("string")},
        ["items", "next_cursor"],
    ),
    "DatasetPatch": _obj(
        {
            "title": _STR,
            "description": _STR,
            "tags": {"type": "array", "items": _STR},
            "license": _STR,
            "visibility": {"type": "string", "enum": ["private", "organization", "public"]},
        },
        extra=False,
    ),
    "VersionList": _obj(
        {
            "items": {
                "type": "array",
                "items": _obj(
                    {
                        "version": _INT,
                        "file": _FILE,
                        "created_at": _TIME,
                        "created_by": _nullable("string"),
                        "removed_at": _NTIME,
                    }
                ),
            }
        },
        ["items"],
    ),
    "DownloadRecord": _RECORD,
    "DownloadHistory": _obj(
        {"items": {"type": "array", "items": _RECORD}, "next_cursor": _nullable("string")},
        ["items", "next_cursor"],
    ),
    "TokenRequest": _obj(
        {
            "format": _STR,
            "expires_in": _INT,
            "max_uses": _nullable("integer"),
            "accept_terms": _BOOL,
            "version": _INT,
        },
        extra=False,
    ),
    "DownloadToken": _obj(
        {
            "token": _STR,
            "token_id": _STR,
            "url": {"type": "string", "format": "uri"},
            "expires_at": _TIME,
            "max_uses": _nullable("integer"),
        },
        ["token", "token_id", "url", "expires_at", "max_uses"],
    ),
    "Analytics": _obj(
        {
            "since": _TIME,
            "until": _TIME,
            "totals": {"type": "object"},
            "per_day": {"type": "array"},
            "per_format": {"type": "object"},
            "top_downloaders": {"type": "array"},
        },
        ["totals", "per_day"],
    ),
    "Preview": _obj(
        {
            "columns": {"type": "array", "items": _obj({"name": _STR, "type": _STR})},
            "rows": {"type": "array", "items": {"type": "array"}},
            "offset": _INT,
            "limit": _INT,
            "total_rows": _nullable("integer"),
        },
        ["columns", "rows", "offset", "limit", "total_rows"],
    ),
    "Metadata": _obj(
        {
            "schema": {"type": "object"},
            "row_count": _INT,
            "statistics": {"type": "object"},
            "quality": {"type": "object"},
            "analyzed_at": _TIME,
        },
        ["schema", "row_count", "statistics", "quality"],
    ),
    "AnalysisPending": _obj({"status": _STR, "code": _STR, "retry_after": _INT}),
    "Me": _obj(
        {
            "user": {"type": ["object", "null"]},
            "credential": _STR,
            "scopes": {"type": ["array", "null"], "items": _STR},
            "organizations": {"type": "array", "items": {"type": "object"}},
        },
        ["user", "organizations"],
    ),
    "Quota": _obj({"quotas": {"type": "array", "items": {"type": "object"}}}, ["quotas"]),
    "ApiKeyRequest": _obj(
        {
            "name": _STR,
            "scopes": {
                "type": "array",
                "items": {"type": "string", "enum": ["read", "download", "publish", "admin"]},
            },
            "expires_in": _INT,
        },
        ["name"],
        extra=False,
    ),
    "ApiKey": _obj(
        {
            "id": _STR,
            "name": _STR,
            "scopes": {"type": "array", "items": _STR},
            "created_at": _TIME,
            "expires_at": _NTIME,
            "revoked_at": _NTIME,
        }
    ),
    "ApiKeyCreated": _obj(
        {"id": _STR, "name": _STR, "key": _STR, "scopes": {"type": "array", "items": _STR}},
        ["id", "key"],
    ),
    "ApiKeyList": _obj({"items": {"type": "array", "items": _ref("ApiKey")}}, ["items"]),
    "DownloadPolicy": _obj(_POLICY_PROPS, extra=False),
    "DatasetPolicy": _obj({**_POLICY_PROPS, "effective": _ref("DownloadPolicy")}),
    "GrantRequest": _obj(
        {
            "user": _STR,
            "organization": _STR,
            "permission": {"type": "string", "enum": ["view", "download"]},
            "expires_at": _TIME,
        },
        extra=False,
    ),
    "Grant": _obj(
        {
            "id": _STR,
            "dataset_id": _STR,
            "permission": _STR,
            "user": _nullable("string"),
            "organization": _nullable("string"),
            "expires_at": _NTIME,
            "created_at": _TIME,
        }
    ),
    "GrantList": _obj({"items": {"type": "array", "items": _ref("Grant")}}, ["items"]),
    "Status": _obj({"status": _STR, "checks": {"type": "object"}}, ["status"]),
}

#: Request bodies as API.md shows them: what the documentation and the examples phase of
#: an OpenAPI test tool start from.
_BODY_EXAMPLES: dict[str, dict[str, Any]] = {
    "TokenRequest": {"format": "csv", "expires_in": 3600, "max_uses": 1, "accept_terms": True},
    "ApiKeyRequest": {"name": "ci", "scopes": ["read", "download"], "expires_in": 2592000},
    "GrantRequest": {"user": "member", "permission": "download"},
    "DatasetPatch": {"title": "Palmer penguins", "tags": ["biology", "penguins"]},
}
for _name, _example in _BODY_EXAMPLES.items():
    SCHEMAS[_name] = {**SCHEMAS[_name], "examples": [_example]}

_DOWNLOAD_HEADERS = {
    name: {"schema": _STR, "description": text}
    for name, text in (
        ("ETag", "Strong, from the content's sha256 and the format."),
        ("Last-Modified", "When this version was published."),
        ("Accept-Ranges", "Always bytes."),
        ("Cache-Control", "private"),
        ("Content-Disposition", "attachment with filename= and filename*=UTF-8''."),
        ("X-Download-Id", "The DownloadRecord; poll /api/v1/downloads/{id}."),
        ("Repr-Digest", "RFC 9530 sha-256 of the original format."),
        ("RateLimit-Policy", "IETF RateLimit policy, when a rate limit applies."),
        ("RateLimit", "IETF RateLimit remaining and reset, when a rate limit applies."),
    )
}


#: Every Content-Type a download may carry: each format's own media type.
_DOWNLOAD_MEDIA_TYPES = (*(f.media_type for f in FileFormat), "application/octet-stream")


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


_COMMON_PROBLEMS = {
    "400": "bad_request: a parameter or body is malformed.",
    "401": "auth_required: the credential is missing or not valid.",
    "403": "forbidden, or another denial code.",
    "404": "not_found: no such resource, or the principal may not see it.",
    "429": "rate_limited or quota_exceeded.",
    "500": "internal: the server failed.",
}


def _response(route: Route, status: str, description: str) -> dict[str, Any]:
    code = int(status) if status.isdigit() else 0
    if code == 429:
        return _problem(
            description,
            {
                "Retry-After": {"schema": _INT},
                "RateLimit": {"schema": _STR},
                "RateLimit-Policy": {"schema": _STR},
            },
        )
    if code == 401:
        return _problem(description, {"WWW-Authenticate": {"schema": _STR}})
    if code == 416:
        return _problem(
            description, {"Content-Range": {"schema": _STR, "description": "bytes */<size>"}}
        )
    if code >= 400:
        return _problem(description)
    response: dict[str, Any] = {"description": description}
    if code in (200, 206) and route.extra.get("download"):
        response["headers"] = dict(_DOWNLOAD_HEADERS)
        if code == 206:
            response["headers"]["Content-Range"] = {"schema": _STR}
        binary = {"schema": {"type": "string", "format": "binary"}}
        response["content"] = {
            **{media: dict(binary) for media in _DOWNLOAD_MEDIA_TYPES},
            **({"multipart/byteranges": {"schema": {"type": "string"}}} if code == 206 else {}),
        }
        return response
    if code == 304:
        response["headers"] = {"ETag": {"schema": _STR}}
        return response
    if code == 202 and route.extra.get("pending"):
        response["headers"] = {"Retry-After": {"schema": _INT}}
        response["content"] = {"application/json": {"schema": _ref("AnalysisPending")}}
        return response
    if code == 201 and route.returns:
        response["headers"] = {"Location": {"schema": _STR}}
    if route.returns and code in (200, 201):
        media = route.extra.get("media", "application/json")
        schema = _ref(route.returns) if route.returns[0].isupper() else {"type": "string"}
        response["content"] = {media: {"schema": schema}}
    return response


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id + ("_head" if route.method == "HEAD" else ""),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {},
    }
    params = []
    for p in route.params:
        schema: dict[str, Any] = {"type": p.type}
        if p.enum:
            schema["enum"] = list(p.enum)
        if p.minimum is not None:
            schema["minimum"] = p.minimum
        if p.maximum is not None:
            schema["maximum"] = p.maximum
        param: dict[str, Any] = {
            "name": p.name,
            "in": p.where,
            "required": p.where == "path" or p.required,
            "description": p.description,
            "schema": schema,
        }
        if p.example is not None:
            param["example"] = p.example
        params.append(param)
    if params:
        op["parameters"] = params
    if route.body == "upload":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": _obj({"file": {"type": "string", "format": "binary"}}, ["file"])
                },
            },
        }
    elif route.body:
        op["requestBody"] = {
            "required": route.method != "PUT" or "Policy" not in route.body,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    responses = dict(route.responses)
    if route.auth:
        for status, text in _COMMON_PROBLEMS.items():
            responses.setdefault(status, text)
    for status, text in sorted(responses.items()):
        op["responses"][status] = _response(route, status, text)
    if route.auth:
        op["security"] = [{"bearer": []}, {"token": []}, {}]
    else:
        op["security"] = []
    return op


def build_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "datadl",
            "version": datadl.__version__,
            "description": "Publish tabular datasets and download them safely and fast. "
            "Every error is application/problem+json (RFC 9457) with a stable code and a hint.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: ddl_<id>_<secret>.",
                },
                "token": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "A download token, on download URLs only.",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "datadl_session"},
            },
        },
    }


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained HTML page listing every operation; no script, no CDN."""
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            statuses = ", ".join(op["responses"])
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(
                "<tr><td class=m>{}</td><td><code>{}</code></td><td>{}</td>"
                "<td>{}</td><td>{}</td></tr>".format(
                    html.escape(method.upper()),
                    html.escape(path),
                    html.escape(op["summary"]),
                    html.escape(params),
                    html.escape(statuses),
                )
            )
    schemas = html.escape(json.dumps(document["components"]["schemas"], indent=2))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>datadl API</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.3rem;
text-align:left;vertical-align:top}}.m{{font-weight:bold}}pre{{background:#f6f6f6;padding:1rem;
overflow:auto}}
</style></head><body>
<h1>datadl API {html.escape(document["info"]["version"])}</h1>
<p>{html.escape(document["info"]["description"])}
The machine-readable document is at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
<table><thead><tr><th>Method</th><th>Path</th><th>What it does</th><th>Parameters</th>
<th>Responses</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h2>Schemas</h2><pre>{schemas}</pre>
</body></html>
"""


def openapi_handler(document: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(document).encode(), content_type="application/json", charset="utf-8"
    )
