"""Domain values as the JSON bodies API.md defines, and JSON bodies back into values."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from aiohttp import web

from datadl.domain.accounting import Analytics, DownloadRecord
from datadl.domain.errors import BadRequest
from datadl.domain.model import ApiKey, Dataset, DatasetFile, DatasetVersion, Grant
from datadl.domain.policy import DownloadPolicy, PolicyOverride, QuotaLimit, Window
from datadl.domain.ratelimit import RateLimit
from datadl.domain.tables import Page, TableProfile
from datadl.entrypoints.web.config import JSON_MAX_BYTES
from datadl.services.accounts import Me
from datadl.services.audit import QuotaStatus

API = "/api/v1"
#: Integers beyond this are refused: JSON clients lose precision past 2**53, databases overflow.
MAX_JSON_INT = 2**53


def rfc3339(value: datetime | None) -> str | None:
    """A UTC timestamp as RFC 3339 with a Z, or None."""
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, frozenset | set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; null is the honest rendering.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A UTF-8 JSON response."""
    text = json.dumps(_finite(body), default=_default, ensure_ascii=False, allow_nan=False)
    return web.Response(
        status=status,
        body=text.encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


async def read_json(request: web.Request, *, allow_null: bool = False) -> dict[str, Any]:
    """The request's JSON object body; ``BadRequest`` for anything else."""
    if request.content_length is not None and request.content_length > JSON_MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(JSON_MAX_BYTES, request.content_length)
    raw = await request.read()
    if not raw.strip():
        if allow_null:
            return {}
        raise BadRequest("The request needs a JSON object body.", hint="Send a JSON object.")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON.", hint="Send a JSON object.") from None
    if value is None and allow_null:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object.", hint="Send a JSON object.")
    return value


def only_keys(body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Refuse unknown fields, naming them, so a typo is not silently ignored."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"Unknown field(s): {', '.join(unknown)}.",
            hint=f"Allowed fields: {', '.join(allowed)}.",
        )


def typed(
    body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, null: bool = True
) -> Any:
    """A field of ``kind`` (or None if absent/null and allowed); ``BadRequest`` otherwise."""
    value = body.get(key)
    if value is None:
        if null:
            return None
        raise BadRequest(f"{key} is required.", hint=f"Send a value for {key}.")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"{key} has the wrong type.", hint="Check the API documentation.")
    if not isinstance(value, kinds):
        raise BadRequest(f"{key} has the wrong type.", hint="Check the API documentation.")
    if isinstance(value, int | float) and not -MAX_JSON_INT <= value <= MAX_JSON_INT:
        raise BadRequest(f"{key} is out of range.", hint="Use a smaller number.")
    return value


# --- datasets ---------------------------------------------------------------------------


def file_json(file: DatasetFile) -> dict[str, Any]:
    return {
        "format": file.format.value,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
        "media_type": file.media_type,
        "filename": file.filename,
    }


def dataset_links(dataset_id: str) -> dict[str, str]:
    base = f"{API}/datasets/{dataset_id}"
    return {
        "self": base,
        "download": f"{base}/download",
        "download_token": f"{base}/download-token",
        "versions": f"{base}/versions",
        "preview": f"{base}/preview",
        "metadata": f"{base}/metadata",
        "download_history": f"{base}/download-history",
        "analytics": f"{base}/analytics",
        "grants": f"{base}/grants",
        "download_policy": f"{base}/download-policy",
    }


def dataset_json(dataset: Dataset, *, organization: str, owner: str) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "slug": dataset.slug,
        "title": dataset.title,
        "description": dataset.description,
        "organization": organization,
        "owner": owner,
        "visibility": dataset.visibility.value,
        "tags": list(dataset.tags),
        "license": dataset.license,
        "version": dataset.version,
        "status": dataset.status.value,
        "file": file_json(dataset.file),
        "row_count": dataset.row_count,
        "column_count": dataset.column_count,
        "download_count": dataset.download_count,
        "created_at": rfc3339(dataset.created_at),
        "updated_at": rfc3339(dataset.updated_at),
        "links": dataset_links(dataset.id),
    }


def version_json(version: DatasetVersion) -> dict[str, Any]:
    return {
        "version": version.number,
        "file": file_json(version.file),
        "created_at": rfc3339(version.created_at),
        "created_by": version.created_by,
        "removed_at": rfc3339(version.removed_at),
    }


def grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "dataset_id": grant.dataset_id,
        "permission": grant.permission.value,
        "user": grant.user_id,
        "organization": grant.organization_id,
        "expires_at": rfc3339(grant.expires_at),
        "created_at": rfc3339(grant.created_at),
        "created_by": grant.created_by,
    }


# --- downloads and audit ----------------------------------------------------------------


def record_json(record: DownloadRecord, *, detailed: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id,
        "dataset_id": record.dataset_id,
        "version": record.version,
        "format": record.format,
        "status": record.status.value,
        "channel": record.channel.value,
        "range": record.byte_range,
        "bytes_sent": record.bytes_sent,
        "bytes_total": record.bytes_expected,
        "started_at": rfc3339(record.started_at),
        "finished_at": rfc3339(record.finished_at),
        "denial_code": record.denial_code,
    }
    if detailed:
        body["principal_id"] = record.principal_id
        body["downloader"] = record.downloader
        body["token_id"] = record.token_id
        body["user_agent"] = record.user_agent
        body["failure_reason"] = record.failure_reason
    return body


def analytics_json(a: Analytics) -> dict[str, Any]:
    return {
        "since": rfc3339(a.since),
        "until": rfc3339(a.until),
        "totals": {
            "downloads": a.downloads,
            "requests": a.requests,
            "bytes": a.bytes,
            "unique_downloaders": a.unique_downloaders,
            "completed": a.completed,
            "aborted": a.aborted,
            "failures": a.failures,
            "denials": a.denials,
        },
        "denials_by_code": dict(a.denials_by_code),
        "per_day": [
            {
                "date": d.day.isoformat(),
                "downloads": d.downloads,
                "requests": d.requests,
                "bytes": d.bytes,
                "denials": d.denials,
                "failures": d.failures,
            }
            for d in a.per_day
        ],
        "per_format": dict(a.per_format),
        "top_downloaders": [
            {
                "downloader": t.downloader,
                "user": t.principal_id,
                "downloads": t.downloads,
                "bytes": t.bytes,
            }
            for t in a.top_downloaders
        ],
    }


# --- people -----------------------------------------------------------------------------


def me_json(me: Me) -> dict[str, Any]:
    roles = {m.organization_id: m.role.value for m in me.memberships}
    return {
        "user": None
        if me.user is None
        else {
            "id": me.user.id,
            "name": me.user.name,
            "display_name": me.user.display_name,
            "email": me.user.email,
        },
        "credential": me.credential.value,
        "scopes": None if me.scopes is None else sorted(s.value for s in me.scopes),
        "organizations": [
            {"id": o.id, "slug": o.slug, "title": o.title, "role": roles.get(o.id)}
            for o in me.organizations
        ],
    }


def quota_json(statuses: Sequence[QuotaStatus]) -> dict[str, Any]:
    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else max(0, limit - used)

    return {
        "quotas": [
            {
                "organization": s.organization,
                "subject": s.subject.value,
                "window": s.limit.window.value,
                "limit": {"bytes": s.limit.bytes, "downloads": s.limit.downloads},
                "used": {"bytes": s.used.bytes, "downloads": s.used.downloads},
                "remaining": {
                    "bytes": left(s.limit.bytes, s.used.bytes),
                    "downloads": left(s.limit.downloads, s.used.downloads),
                },
                "resets_at": rfc3339(s.resets_at),
            }
            for s in statuses
        ]
    }


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scopes": sorted(s.value for s in key.scopes),
        "created_at": rfc3339(key.created_at),
        "expires_at": rfc3339(key.expires_at),
        "revoked_at": rfc3339(key.revoked_at),
        "last_used_at": rfc3339(key.last_used_at),
    }


# --- policies ---------------------------------------------------------------------------

POLICY_FIELDS = (
    "allowed_formats",
    "max_download_bytes",
    "allow_anonymous",
    "require_token",
    "token_max_ttl_seconds",
    "terms",
    "rate_limit",
    "quota",
    "audit_retention_days",
    "neutralize_formulas",
)


def _quota_json(q: QuotaLimit | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"bytes": q.bytes, "downloads": q.downloads, "window": q.window.value}


def _rate_json(r: RateLimit | None) -> dict[str, Any] | None:
    return None if r is None else {"requests": r.requests, "per_seconds": r.per_seconds}


def policy_json(p: DownloadPolicy | PolicyOverride) -> dict[str, Any]:
    return {
        "allowed_formats": None if p.allowed_formats is None else sorted(p.allowed_formats),
        "max_download_bytes": p.max_download_bytes,
        "allow_anonymous": p.allow_anonymous,
        "require_token": p.require_token,
        "token_max_ttl_seconds": p.token_max_ttl_seconds,
        "terms": p.terms,
        "rate_limit": _rate_json(p.rate_limit),
        "quota": {
            "user": _quota_json(p.user_quota),
            "organization": _quota_json(p.organization_quota),
        },
        "audit_retention_days": p.audit_retention_days,
        "neutralize_formulas": p.neutralize_formulas,
    }


def _quota_from(value: Any, name: str) -> QuotaLimit | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"quota.{name} must be an object or null.", hint="See DownloadPolicy.")
    only_keys(value, ("bytes", "downloads", "window"))
    try:
        return QuotaLimit(
            bytes=typed(value, "bytes", int),
            downloads=typed(value, "downloads", int),
            window=Window(value.get("window", "day")),
        )
    except ValueError as exc:
        raise BadRequest(f"quota.{name}: {exc}", hint="Use window day or month.") from None


def _policy_values(body: Mapping[str, Any]) -> dict[str, Any]:
    only_keys(body, POLICY_FIELDS)
    values: dict[str, Any] = {}
    if "allowed_formats" in body:
        formats = body["allowed_formats"]
        if formats is not None and (
            not isinstance(formats, list) or not all(isinstance(f, str) for f in formats)
        ):
            raise BadRequest("allowed_formats must be a list of formats or null.", hint="")
        values["allowed_formats"] = None if formats is None else frozenset(formats)
    for name, kind in (
        ("max_download_bytes", int),
        ("allow_anonymous", bool),
        ("require_token", bool),
        ("token_max_ttl_seconds", int),
        ("terms", str),
        ("audit_retention_days", int),
        ("neutralize_formulas", bool),
    ):
        if name in body:
            values[name] = typed(body, name, kind)
    if "rate_limit" in body:
        rate = body["rate_limit"]
        if rate is None:
            values["rate_limit"] = None
        elif isinstance(rate, dict):
            only_keys(rate, ("requests", "per_seconds"))
            values["rate_limit"] = RateLimit(
                requests=typed(rate, "requests", int, null=False),
                per_seconds=typed(rate, "per_seconds", (int, float), null=False),
            )
        else:
            raise BadRequest("rate_limit must be an object or null.", hint="See DownloadPolicy.")
    if "quota" in body:
        quota = body["quota"]
        if quota is not None and not isinstance(quota, dict):
            raise BadRequest("quota must be an object or null.", hint="See DownloadPolicy.")
        quota = quota or {}
        only_keys(quota, ("user", "organization"))
        values["user_quota"] = _quota_from(quota.get("user"), "user")
        values["organization_quota"] = _quota_from(quota.get("organization"), "organization")
    return values


def _checked_values(body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return _policy_values(body)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"Invalid policy: {exc}", hint="See DownloadPolicy in API.md.") from None


def policy_from(body: Mapping[str, Any]) -> DownloadPolicy:
    """A full organisation DownloadPolicy from its JSON body; omitted fields take defaults."""
    values = _checked_values(body)
    for name in (
        "allow_anonymous",
        "require_token",
        "token_max_ttl_seconds",
        "audit_retention_days",
        "neutralize_formulas",
    ):
        if name in values and values[name] is None:
            del values[name]
    try:
        return DownloadPolicy(**values)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"Invalid policy: {exc}", hint="See DownloadPolicy in API.md.") from None


def override_from(body: Mapping[str, Any]) -> PolicyOverride | None:
    """A dataset's own policy from JSON; an empty body clears it."""
    values = {k: v for k, v in _checked_values(body).items() if v is not None}
    if not values:
        return None
    try:
        return PolicyOverride(**values)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"Invalid policy: {exc}", hint="See DownloadPolicy in API.md.") from None


# --- insight ----------------------------------------------------------------------------


def page_json(page: Page) -> dict[str, Any]:
    return {
        "columns": [{"name": c.name, "type": c.type} for c in page.columns],
        "rows": [list(r) for r in page.rows],
        "offset": page.offset,
        "limit": page.limit,
        "total_rows": page.total_rows,
    }


def profile_json(profile: TableProfile) -> dict[str, Any]:
    q = profile.quality
    return {
        "schema": {
            "columns": [
                {"name": c.name, "type": c.type, "nullable": c.nullable} for c in profile.columns
            ]
        },
        "row_count": profile.row_count,
        "statistics": {k: dict(v) for k, v in profile.statistics.items()},
        "quality": {
            "score": q.score,
            "completeness": q.completeness,
            "consistency": q.consistency,
            "uniqueness": q.uniqueness,
            "validity": q.validity,
            "issues": [
                {
                    "column": i.column,
                    "kind": i.kind,
                    "severity": i.severity,
                    "message": i.message,
                    "affected_rows": i.affected_rows,
                }
                for i in q.issues
            ],
        },
        "analyzed_at": rfc3339(profile.analyzed_at),
    }
