"""Builders of valid domain values with sensible defaults, for contract suites and tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

from datadl.domain.access import Principal
from datadl.domain.accounting import Channel, DownloadRecord, DownloadStatus
from datadl.domain.model import (
    ApiKey,
    Dataset,
    DatasetFile,
    DatasetStatus,
    DatasetVersion,
    FileFormat,
    Grant,
    Organization,
    Permission,
    Role,
    Scope,
    User,
    Visibility,
)
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.domain.tokens import TokenClaims
from datadl.ports.catalog import Audience

#: A fixed instant that builders use as "now"; whole seconds, UTC.
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """The instant ``seconds`` after ``T0``."""
    return T0 + timedelta(seconds=seconds)


def organization(id: str, slug: str | None = None, *, created_at: datetime = T0) -> Organization:
    """An organisation whose slug and title default from its id."""
    slug = slug or id.lower().replace("_", "-")
    return Organization(id=id, slug=slug, title=slug.title(), created_at=created_at)


def user(id: str, name: str | None = None, *, created_at: datetime = T0) -> User:
    """A user whose name defaults to its id."""
    name = name or id
    return User(id=id, name=name, display_name=name.title(), created_at=created_at)


def dataset_file(content: bytes = b"a,b\n1,2\n", *, key: str | None = None) -> DatasetFile:
    """The file facts of ``content`` stored as csv."""
    sha = hashlib.sha256(content).hexdigest()
    return DatasetFile(
        storage_key=key or f"blobs/{sha}",
        format=FileFormat.CSV,
        size_bytes=len(content),
        sha256=sha,
        media_type=FileFormat.CSV.media_type,
        filename="data.csv",
    )


def dataset(
    id: str,
    *,
    organization_id: str,
    owner_id: str,
    slug: str | None = None,
    visibility: Visibility = Visibility.PUBLIC,
    created_at: datetime = T0,
    title: str | None = None,
    description: str = "",
    tags: Iterable[str] = (),
    version: int = 1,
    deleted_at: datetime | None = None,
) -> Dataset:
    """A ready dataset whose slug and title default from its id."""
    slug = slug or id.lower().replace("_", "-")
    return Dataset(
        id=id,
        slug=slug,
        title=title if title is not None else f"Dataset {id}",
        description=description,
        organization_id=organization_id,
        owner_id=owner_id,
        visibility=visibility,
        tags=tuple(tags),
        license=None,
        version=version,
        file=dataset_file(id.encode()),
        status=DatasetStatus.READY,
        created_at=created_at,
        updated_at=created_at,
        deleted_at=deleted_at,
    )


def version_of(
    ds: Dataset, number: int | None = None, *, created_at: datetime | None = None
) -> DatasetVersion:
    """A version of ``ds``: by default its current one."""
    return DatasetVersion(
        dataset_id=ds.id,
        number=ds.version if number is None else number,
        file=ds.file,
        created_at=created_at or ds.created_at,
        created_by=ds.owner_id,
    )


def grant(
    id: str,
    dataset_id: str,
    *,
    user_id: str | None = None,
    organization_id: str | None = None,
    permission: Permission = Permission.VIEW,
    created_at: datetime = T0,
    expires_at: datetime | None = None,
    created_by: str = "admin",
) -> Grant:
    """A grant of one dataset to one user or one organisation."""
    return Grant(
        id=id,
        dataset_id=dataset_id,
        permission=permission,
        created_at=created_at,
        created_by=created_by,
        user_id=user_id,
        organization_id=organization_id,
        expires_at=expires_at,
    )


def api_key(
    id: str,
    user_id: str,
    *,
    created_at: datetime = T0,
    scopes: Iterable[Scope] = (Scope.READ,),
    expires_at: datetime | None = None,
) -> ApiKey:
    """An API key holding a placeholder hash."""
    return ApiKey(
        id=id,
        user_id=user_id,
        name=f"key {id}",
        scopes=frozenset(scopes),
        secret_hash=hashlib.sha256(id.encode()).hexdigest(),
        created_at=created_at,
        expires_at=expires_at,
    )


def token_claims(
    token_id: str,
    dataset_id: str = "d1",
    *,
    issued_at: datetime = T0,
    expires_at: datetime | None = None,
    max_uses: int | None = 3,
    principal_id: str | None = None,
) -> TokenClaims:
    """The claims of a csv download token of version 1, valid for an hour by default."""
    return TokenClaims(
        token_id=token_id,
        dataset_id=dataset_id,
        version=1,
        format="csv",
        principal_id=principal_id,
        issued_at=issued_at,
        expires_at=expires_at or issued_at + timedelta(hours=1),
        max_uses=max_uses,
        key_id="k1",
    )


def record(
    id: str,
    dataset_id: str = "d1",
    *,
    organization_id: str = "o1",
    status: DownloadStatus = DownloadStatus.COMPLETED,
    started_at: datetime = T0,
    finished_at: datetime | None = None,
    principal_id: str | None = None,
    downloader: str | None = None,
    format: str = "csv",
    bytes_sent: int = 0,
    logical: bool = True,
    denial_code: str | None = None,
    channel: Channel = Channel.API,
) -> DownloadRecord:
    """A download record; a final one finishes a second after it started by default."""
    if finished_at is None and status is not DownloadStatus.STARTED:
        finished_at = started_at + timedelta(seconds=1)
    return DownloadRecord(
        id=id,
        dataset_id=dataset_id,
        organization_id=organization_id,
        version=1,
        format=format,
        status=status,
        channel=channel,
        started_at=started_at,
        downloader=downloader or (f"user:{principal_id}" if principal_id else "anon:x"),
        principal_id=principal_id,
        bytes_sent=bytes_sent,
        finished_at=finished_at,
        logical=logical,
        denial_code=denial_code,
    )


def charge(
    key: str,
    *,
    bytes_limit: int | None = None,
    downloads_limit: int | None = None,
    window_end: datetime | None = None,
    subject: QuotaSubject = QuotaSubject.USER,
) -> QuotaCharge:
    """A charge on counter ``key`` whose window ends a day after ``T0`` by default."""
    return QuotaCharge(
        key=key,
        subject=subject,
        bytes_limit=bytes_limit,
        downloads_limit=downloads_limit,
        window_end=window_end or T0 + timedelta(days=1),
    )


def reservation(
    id: str,
    *charges: QuotaCharge,
    bytes: int = 100,
    downloads: int = 1,
    expires_at: datetime | None = None,
) -> Reservation:
    """A reservation on ``charges`` that expires an hour after ``T0`` by default."""
    return Reservation(
        id=id,
        charges=tuple(charges),
        bytes=bytes,
        downloads=downloads,
        expires_at=expires_at or T0 + timedelta(hours=1),
    )


def audience_for(principal: Principal, now: datetime | None) -> Audience:
    """The listing audience of a principal, as a service would build it."""
    return Audience(
        user_id=principal.user_id,
        organization_ids=principal.organization_ids,
        admin_organization_ids=frozenset(
            m.organization_id for m in principal.memberships if m.role is Role.ADMIN
        ),
        now=now,
    )


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    """An async stream of ``parts``."""
    for part in parts:
        yield part


async def failing_stream(*parts: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    """An async stream of ``parts`` that then raises ``error`` (an OSError by default)."""
    for part in parts:
        yield part
    raise error or OSError("the client went away")


async def collect(chunks: AsyncIterable[bytes]) -> bytes:
    """Every byte of an async stream, joined."""
    return b"".join([chunk async for chunk in chunks])
