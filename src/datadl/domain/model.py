"""Catalog values: organisations, users, datasets, versions, grants and API keys."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from datetime import datetime

import attrs

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_slug(value: str) -> bool:
    """Tell whether ``value`` is a lower-case URL slug of 1 to 64 characters."""
    return bool(_SLUG.match(value))


def slugify(text: str) -> str:
    """Derive a slug from a title or filename; empty when nothing usable is left."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:64].rstrip("-")


class Visibility(enum.StrEnum):
    """Who can see a dataset before any grant is considered."""

    PRIVATE = "private"
    ORGANIZATION = "organization"
    PUBLIC = "public"


class Role(enum.StrEnum):
    """A user's role in an organisation; admins administer every dataset of it."""

    MEMBER = "member"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    """What a grant shares; ``download`` includes ``view``."""

    VIEW = "view"
    DOWNLOAD = "download"


class Scope(enum.StrEnum):
    """What an API key may be used for."""

    READ = "read"
    DOWNLOAD = "download"
    PUBLISH = "publish"
    ADMIN = "admin"


class FileFormat(enum.StrEnum):
    """A tabular file format datadl reads and writes."""

    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    JSONL = "jsonl"
    PARQUET = "parquet"
    XLSX = "xlsx"

    @property
    def media_type(self) -> str:
        """The IANA media type served for this format."""
        return _MEDIA_TYPES[self]

    @property
    def extension(self) -> str:
        """The filename extension, without the dot."""
        return self.value

    @classmethod
    def from_media_type(cls, media_type: str) -> FileFormat | None:
        """The format a ``Content-Type`` names, ignoring parameters; None if unknown."""
        bare = media_type.split(";", 1)[0].strip().lower()
        return _FROM_MEDIA_TYPE.get(bare)

    @classmethod
    def from_filename(cls, filename: str) -> FileFormat | None:
        """The format a filename's extension names; None if unknown."""
        _, dot, ext = filename.rpartition(".")
        if not dot:
            return None
        ext = ext.lower()
        if ext in ("ndjson",):
            return cls.JSONL
        try:
            return cls(ext)
        except ValueError:
            return None


_MEDIA_TYPES = {
    FileFormat.CSV: "text/csv",
    FileFormat.TSV: "text/tab-separated-values",
    FileFormat.JSON: "application/json",
    FileFormat.JSONL: "application/jsonl",
    FileFormat.PARQUET: "application/vnd.apache.parquet",
    FileFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_FROM_MEDIA_TYPE = {v: k for k, v in _MEDIA_TYPES.items()} | {
    "application/x-ndjson": FileFormat.JSONL,
    "application/x-jsonlines": FileFormat.JSONL,
    "application/x-parquet": FileFormat.PARQUET,
    "text/tsv": FileFormat.TSV,
}

ORIGINAL = "original"
EXPORT_FORMATS: tuple[str, ...] = (ORIGINAL, *(f.value for f in FileFormat))


class DatasetStatus(enum.StrEnum):
    """Where the analysis of a dataset's current file stands."""

    ANALYZING = "analyzing"
    READY = "ready"
    FAILED = "failed"


def _check_sha256(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not _SHA256.match(value):
        raise ValueError("sha256 must be 64 lower-case hex digits")


def _non_negative(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must not be negative")


@attrs.frozen
class Organization:
    """A publisher: owns datasets and sets their download policy."""

    id: str
    slug: str = attrs.field()
    title: str
    created_at: datetime

    @slug.validator
    def _check_slug(self, _attr: attrs.Attribute[str], value: str) -> None:
        if not is_slug(value):
            raise ValueError(f"not a valid organisation slug: {value!r}")


@attrs.frozen
class User:
    """A person (or a service account) who signs in or holds API keys."""

    id: str
    name: str = attrs.field()
    display_name: str
    created_at: datetime
    email: str | None = None

    @name.validator
    def _check_name(self, _attr: attrs.Attribute[str], value: str) -> None:
        if not _NAME.match(value):
            raise ValueError(f"not a valid user name: {value!r}")


@attrs.frozen
class Membership:
    """A user's role in one organisation."""

    organization_id: str
    user_id: str
    role: Role


@attrs.frozen
class DatasetFile:
    """The facts of one stored file: where it is and what it must hash to."""

    storage_key: str
    format: FileFormat
    size_bytes: int = attrs.field(validator=_non_negative)
    sha256: str = attrs.field(validator=_check_sha256)
    media_type: str
    filename: str


@attrs.frozen
class DatasetVersion:
    """One published file of a dataset; replacing the file adds a version."""

    dataset_id: str
    number: int
    file: DatasetFile
    created_at: datetime
    created_by: str | None
    removed_at: datetime | None = None


@attrs.frozen
class Dataset:
    """A published table and the facts about its current version."""

    id: str
    slug: str
    title: str
    description: str
    organization_id: str
    owner_id: str
    visibility: Visibility
    tags: tuple[str, ...]
    license: str | None
    version: int
    file: DatasetFile
    status: DatasetStatus
    created_at: datetime
    updated_at: datetime
    row_count: int | None = None
    column_count: int | None = None
    download_count: int = 0
    deleted_at: datetime | None = None
    corrupted_reason: str | None = None
    analysis_error: str | None = None

    @property
    def is_deleted(self) -> bool:
        """Whether the dataset was deleted (its files go with the next cleanup)."""
        return self.deleted_at is not None

    def matches(self, text: str) -> bool:
        """Case-insensitive search over title, description and tags."""
        needle = text.casefold()
        haystack: Iterable[str] = (self.title, self.description, *self.tags)
        return any(needle in part.casefold() for part in haystack)


@attrs.frozen
class Grant:
    """A share of one dataset with a user or with every member of an organisation."""

    id: str
    dataset_id: str
    permission: Permission
    created_at: datetime
    created_by: str
    user_id: str | None = None
    organization_id: str | None = None
    expires_at: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if (self.user_id is None) == (self.organization_id is None):
            raise ValueError("a grant names exactly one user or one organisation")

    def is_active(self, now: datetime) -> bool:
        """Whether the grant still applies at ``now``."""
        return self.expires_at is None or now < self.expires_at


@attrs.frozen
class ApiKey:
    """A stored API key: only the hash of its secret is kept."""

    id: str
    user_id: str
    name: str
    scopes: frozenset[Scope]
    secret_hash: str = attrs.field(repr=False)
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def is_usable(self, now: datetime) -> bool:
        """Whether the key is neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at
