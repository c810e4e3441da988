"""The SQL schema as Core tables: what the migrations build and the adapters query."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# Alembic migrations are the only way this schema comes to be in a database; a migration
# test checks that upgrading to head yields exactly these tables, columns and indexes.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time stored in UTC and always read back timezone-aware in UTC.

    PostgreSQL keeps ``timestamptz``. SQLite has no time type: SQLAlchemy stores a
    fixed-width ISO text without offset, so values are converted to UTC first, which
    keeps text order equal to time order. A naive value is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def key_type() -> TypeEngine[str]:
    """Text compared byte-wise (``COLLATE "C"`` on PostgreSQL, SQLite's default).

    Ids, slugs and names are ordered and compared like Python strings, so that keyset
    pages and listings order exactly as the memory adapters do whatever the server locale.
    """
    return Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def json_type() -> TypeEngine[Any]:
    """JSON, as ``jsonb`` on PostgreSQL."""
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


def _key(name: str, *args: Any, **kwargs: Any) -> Column[str]:
    kwargs.setdefault("nullable", False)
    return Column(name, key_type(), *args, **kwargs)


def _when(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


# --- catalogue ------------------------------------------------------------------------------

organizations = Table(
    "organizations",
    metadata,
    _key("id", primary_key=True),
    _key("slug", unique=True),
    Column("title", Text, nullable=False),
    _when("created_at"),
)

users = Table(
    "users",
    metadata,
    _key("id", primary_key=True),
    _key("name", unique=True),
    Column("display_name", Text, nullable=False),
    Column("email", Text),
    _when("created_at"),
)

memberships = Table(
    "memberships",
    metadata,
    _key("organization_id", ForeignKey("organizations.id", ondelete="CASCADE")),
    _key("user_id", ForeignKey("users.id", ondelete="CASCADE")),
    Column("role", Text, nullable=False),
    PrimaryKeyConstraint("organization_id", "user_id"),
    Index("ix_memberships_user", "user_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    _key("id", primary_key=True),
    _key("user_id"),
    Column("name", Text, nullable=False),
    Column("scopes", json_type(), nullable=False),
    Column("secret_hash", Text, nullable=False),
    _when("created_at"),
    _when("expires_at", nullable=True),
    _when("revoked_at", nullable=True),
    _when("last_used_at", nullable=True),
    # list_api_keys: a user's keys, newest first.
    Index("ix_api_keys_user", "user_id", "created_at", "id"),
)

# Owner and organisation are not foreign keys: the catalogue port does not require them
# to exist (the memory catalogue does not check), and the adapters must agree.
datasets = Table(
    "datasets",
    metadata,
    _key("id", primary_key=True),
    _key("slug"),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    # Case-folded copies of title and description: searching them with LIKE matches
    # exactly what Dataset.matches (str.casefold) matches, on both databases.
    Column("title_folded", Text, nullable=False),
    Column("description_folded", Text, nullable=False),
    _key("organization_id"),
    _key("owner_id"),
    Column("visibility", Text, nullable=False),
    Column("tags", json_type(), nullable=False),
    Column("license", Text),
    Column("version", Integer, nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("media_type", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("status", Text, nullable=False),
    _when("created_at"),
    _when("updated_at"),
    Column("row_count", BigInteger),
    Column("column_count", Integer),
    Column("download_count", BigInteger, nullable=False, server_default=text("0")),
    _when("deleted_at", nullable=True),
    Column("corrupted_reason", Text),
    Column("analysis_error", Text),
    # A live slug is unique in its organisation; a deleted dataset frees it.
    Index(
        "uq_datasets_live_slug",
        "organization_id",
        "slug",
        unique=True,
        postgresql_where=text("deleted_at IS NULL"),
        sqlite_where=text("deleted_at IS NULL"),
    ),
    # list_datasets: keyset pages by (created_at, id) descending.
    Index("ix_datasets_listing", "created_at", "id"),
    # list_deleted_datasets: only the few deleted rows are indexed.
    Index(
        "ix_datasets_deleted",
        "deleted_at",
        postgresql_where=text("deleted_at IS NOT NULL"),
        sqlite_where=text("deleted_at IS NOT NULL"),
    ),
)

# One row per tag of a dataset (its ``tags`` column keeps their order): the tag filter
# and the text search look tags up here, portably, without JSON functions.
dataset_tags = Table(
    "dataset_tags",
    metadata,
    _key("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE")),
    Column("position", Integer, nullable=False),
    _key("tag"),
    Column("tag_folded", Text, nullable=False),
    PrimaryKeyConstraint("dataset_id", "position"),
    Index("ix_dataset_tags_tag", "tag", "dataset_id"),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    _key("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE")),
    Column("number", Integer, nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("media_type", Text, nullable=False),
    Column("filename", Text, nullable=False),
    _when("created_at"),
    Column("created_by", Text),
    _when("removed_at", nullable=True),
    PrimaryKeyConstraint("dataset_id", "number"),
)

grants = Table(
    "grants",
    metadata,
    _key("id", primary_key=True),
    _key("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE")),
    Column("permission", Text, nullable=False),
    _when("created_at"),
    Column("created_by", Text, nullable=False),
    _key("user_id", nullable=True),
    _key("organization_id", nullable=True),
    _when("expires_at", nullable=True),
    # list_grants and the grant test of list_datasets: a dataset's grants.
    Index("ix_grants_dataset", "dataset_id", "created_at", "id"),
)

organization_policies = Table(
    "organization_policies",
    metadata,
    _key("organization_id", ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("policy", json_type(), nullable=False),
)

dataset_policies = Table(
    "dataset_policies",
    metadata,
    _key("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    Column("policy", json_type(), nullable=False),
)

issued_tokens = Table(
    "issued_tokens",
    metadata,
    _key("token_id", primary_key=True),
    _key("dataset_id"),
    Column("version", Integer, nullable=False),
    Column("format", Text, nullable=False),
    Column("principal_id", Text),
    _when("issued_at"),
    _when("expires_at"),
    Column("max_uses", Integer),
    Column("key_id", Text, nullable=False),
    # purge_tokens: tokens past their expiry.
    Index("ix_issued_tokens_expires_at", "expires_at"),
    # purge_dataset: a dataset's tokens.
    Index("ix_issued_tokens_dataset", "dataset_id"),
)

# --- audit ----------------------------------------------------------------------------------

download_records = Table(
    "download_records",
    metadata,
    _key("id", primary_key=True),
    _key("dataset_id"),
    _key("organization_id"),
    Column("version", Integer),
    Column("format", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("channel", Text, nullable=False),
    _when("started_at"),
    _key("downloader"),
    _key("principal_id", nullable=True),
    Column("api_key_id", Text),
    Column("token_id", Text),
    Column("byte_range", Text),
    Column("bytes_expected", BigInteger),
    Column("bytes_sent", BigInteger, nullable=False),
    _when("finished_at", nullable=True),
    Column("denial_code", Text),
    Column("failure_reason", Text),
    Column("client_address", Text),
    Column("user_agent", Text),
    Column("session_key", Text),
    Column("logical", Boolean, nullable=False, server_default=false()),
    # history by dataset, newest first; analytics of a dataset over [since, until).
    Index("ix_download_records_dataset_history", "dataset_id", "started_at", "id"),
    # history by principal, newest first.
    Index("ix_download_records_principal_history", "principal_id", "started_at", "id"),
    # purge: an organisation's records finished before the retention cut-off.
    Index("ix_download_records_retention", "organization_id", "finished_at"),
)

# --- usage ----------------------------------------------------------------------------------

rate_states = Table(
    "rate_states",
    metadata,
    _key("key", primary_key=True),
    Column("tat", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("ix_rate_states_expires_at", "expires_at"),
)

quota_counters = Table(
    "quota_counters",
    metadata,
    _key("key", primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("downloads", BigInteger, nullable=False),
    _when("window_end"),
    Index("ix_quota_counters_window_end", "window_end"),
)

reservations = Table(
    "reservations",
    metadata,
    _key("id", primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("downloads", BigInteger, nullable=False),
    _when("expires_at"),
    Index("ix_reservations_expires_at", "expires_at"),
)

reservation_charges = Table(
    "reservation_charges",
    metadata,
    _key("reservation_id", ForeignKey("reservations.id", ondelete="CASCADE")),
    Column("position", Integer, nullable=False),
    _key("counter_key"),
    PrimaryKeyConstraint("reservation_id", "position"),
)

token_uses = Table(
    "token_uses",
    metadata,
    _key("token_id", primary_key=True),
    Column("uses", Integer, nullable=False),
    _when("expires_at"),
    Index("ix_token_uses_expires_at", "expires_at"),
)

# ``idle_until`` is last_seen plus the idle time the session was last seen with: the
# session is idle (and cleanup drops it) once that moment has passed.
token_sessions = Table(
    "token_sessions",
    metadata,
    _key("token_id", ForeignKey("token_uses.token_id", ondelete="CASCADE")),
    _key("session_key"),
    _when("last_seen"),
    _when("idle_until"),
    PrimaryKeyConstraint("token_id", "session_key"),
    Index("ix_token_sessions_idle_until", "idle_until"),
)

download_sessions = Table(
    "download_sessions",
    metadata,
    _key("session_key", primary_key=True),
    _when("last_seen"),
    _when("idle_until"),
    Index("ix_download_sessions_idle_until", "idle_until"),
)

revocations = Table(
    "revocations",
    metadata,
    _key("token_id", primary_key=True),
    _when("expires_at"),
    Index("ix_revocations_expires_at", "expires_at"),
)

# --- cache ----------------------------------------------------------------------------------

cache_entries = Table(
    "cache_entries",
    metadata,
    _key("key", primary_key=True),
    Column("value", LargeBinary, nullable=False),
    # Epoch seconds of the adapter's clock; None never expires.
    Column("expires_at", Double),
    Index("ix_cache_entries_expires_at", "expires_at"),
)
