"""The initial schema: catalogue, audit trail, usage counters and cache."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A migration is a frozen snapshot: it spells out its types instead of importing the
# current tables module, which later revisions change.
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")
DELETED = sa.text("deleted_at IS NOT NULL")


def _key(name: str, *args: object, nullable: bool = False, **kwargs: object) -> sa.Column[str]:
    return sa.Column(name, KEY, *args, nullable=nullable, **kwargs)  # type: ignore[arg-type]


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, WHEN, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "organizations",
        _key("id"),
        _key("slug"),
        sa.Column("title", sa.Text, nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_organizations"),
        sa.UniqueConstraint("slug", name="uq_organizations_slug"),
    )
    op.create_table(
        "users",
        _key("id"),
        _key("name"),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "memberships",
        _key("organization_id"),
        _key("user_id"),
        sa.Column("role", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "user_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_memberships_organization_id",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_memberships_user_id", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_memberships_user", "memberships", ["user_id"])
    op.create_table(
        "api_keys",
        _key("id"),
        _key("user_id"),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scopes", JSON, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        _when("created_at"),
        _when("expires_at", nullable=True),
        _when("revoked_at", nullable=True),
        _when("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user_id", "created_at", "id"])
    op.create_table(
        "datasets",
        _key("id"),
        _key("slug"),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("title_folded", sa.Text, nullable=False),
        sa.Column("description_folded", sa.Text, nullable=False),
        _key("organization_id"),
        _key("owner_id"),
        sa.Column("visibility", sa.Text, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("license", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.Column("row_count", sa.BigInteger),
        sa.Column("column_count", sa.Integer),
        sa.Column("download_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        _when("deleted_at", nullable=True),
        sa.Column("corrupted_reason", sa.Text),
        sa.Column("analysis_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index(
        "uq_datasets_live_slug",
        "datasets",
        ["organization_id", "slug"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index("ix_datasets_listing", "datasets", ["created_at", "id"])
    op.create_index(
        "ix_datasets_deleted",
        "datasets",
        ["deleted_at"],
        postgresql_where=DELETED,
        sqlite_where=DELETED,
    )
    op.create_table(
        "dataset_tags",
        _key("dataset_id"),
        sa.Column("position", sa.Integer, nullable=False),
        _key("tag"),
        sa.Column("tag_folded", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "position", name="pk_dataset_tags"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_dataset_tags_dataset_id", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_dataset_tags_tag", "dataset_tags", ["tag", "dataset_id"])
    op.create_table(
        "dataset_versions",
        _key("dataset_id"),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.Text),
        _when("removed_at", nullable=True),
        sa.PrimaryKeyConstraint("dataset_id", "number", name="pk_dataset_versions"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_dataset_versions_dataset_id",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "grants",
        _key("id"),
        _key("dataset_id"),
        sa.Column("permission", sa.Text, nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.Text, nullable=False),
        _key("user_id", nullable=True),
        _key("organization_id", nullable=True),
        _when("expires_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_grants_dataset_id", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_grants_dataset", "grants", ["dataset_id", "created_at", "id"])
    op.create_table(
        "organization_policies",
        _key("organization_id"),
        sa.Column("policy", JSON, nullable=False),
        sa.PrimaryKeyConstraint("organization_id", name="pk_organization_policies"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_organization_policies_organization_id",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "dataset_policies",
        _key("dataset_id"),
        sa.Column("policy", JSON, nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", name="pk_dataset_policies"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name="fk_dataset_policies_dataset_id",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "issued_tokens",
        _key("token_id"),
        _key("dataset_id"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("principal_id", sa.Text),
        _when("issued_at"),
        _when("expires_at"),
        sa.Column("max_uses", sa.Integer),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_issued_tokens"),
    )
    op.create_index("ix_issued_tokens_expires_at", "issued_tokens", ["expires_at"])
    op.create_index("ix_issued_tokens_dataset", "issued_tokens", ["dataset_id"])

    # The first audit trail knew neither ranges, expected sizes nor logical downloads:
    # revision 0002 adds them.
    op.create_table(
        "download_records",
        _key("id"),
        _key("dataset_id"),
        _key("organization_id"),
        sa.Column("version", sa.Integer),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        _when("started_at"),
        _key("downloader"),
        _key("principal_id", nullable=True),
        sa.Column("api_key_id", sa.Text),
        sa.Column("token_id", sa.Text),
        sa.Column("bytes_sent", sa.BigInteger, nullable=False),
        _when("finished_at", nullable=True),
        sa.Column("denial_code", sa.Text),
        sa.Column("failure_reason", sa.Text),
        sa.Column("client_address", sa.Text),
        sa.Column("user_agent", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_download_records"),
    )
    op.create_index(
        "ix_download_records_dataset_history",
        "download_records",
        ["dataset_id", "started_at", "id"],
    )
    op.create_index(
        "ix_download_records_principal_history",
        "download_records",
        ["principal_id", "started_at", "id"],
    )
    op.create_index(
        "ix_download_records_retention", "download_records", ["organization_id", "finished_at"]
    )

    op.create_table(
        "rate_states",
        _key("key"),
        sa.Column("tat", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_states"),
    )
    op.create_index("ix_rate_states_expires_at", "rate_states", ["expires_at"])
    op.create_table(
        "quota_counters",
        _key("key"),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("downloads", sa.BigInteger, nullable=False),
        _when("window_end"),
        sa.PrimaryKeyConstraint("key", name="pk_quota_counters"),
    )
    op.create_index("ix_quota_counters_window_end", "quota_counters", ["window_end"])
    op.create_table(
        "reservations",
        _key("id"),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("downloads", sa.BigInteger, nullable=False),
        _when("expires_at"),
        sa.PrimaryKeyConstraint("id", name="pk_reservations"),
    )
    op.create_index("ix_reservations_expires_at", "reservations", ["expires_at"])
    op.create_table(
        "reservation_charges",
        _key("reservation_id"),
        sa.Column("position", sa.Integer, nullable=False),
        _key("counter_key"),
        sa.PrimaryKeyConstraint("reservation_id", "position", name="pk_reservation_charges"),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
            name="fk_reservation_charges_reservation_id",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "token_uses",
        _key("token_id"),
        sa.Column("uses", sa.Integer, nullable=False),
        _when("expires_at"),
        sa.PrimaryKeyConstraint("token_id", name="pk_token_uses"),
    )
    op.create_index("ix_token_uses_expires_at", "token_uses", ["expires_at"])
    op.create_table(
        "token_sessions",
        _key("token_id"),
        _key("session_key"),
        _when("last_seen"),
        _when("idle_until"),
        sa.PrimaryKeyConstraint("token_id", "session_key", name="pk_token_sessions"),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["token_uses.token_id"],
            name="fk_token_sessions_token_id",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_token_sessions_idle_until", "token_sessions", ["idle_until"])
    op.create_table(
        "download_sessions",
        _key("session_key"),
        _when("last_seen"),
        _when("idle_until"),
        sa.PrimaryKeyConstraint("session_key", name="pk_download_sessions"),
    )
    op.create_index("ix_download_sessions_idle_until", "download_sessions", ["idle_until"])
    op.create_table(
        "revocations",
        _key("token_id"),
        _when("expires_at"),
        sa.PrimaryKeyConstraint("token_id", name="pk_revocations"),
    )
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])
    op.create_table(
        "cache_entries",
        _key("key"),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.PrimaryKeyConstraint("key", name="pk_cache_entries"),
    )
    op.create_index("ix_cache_entries_expires_at", "cache_entries", ["expires_at"])


def downgrade() -> None:
    for table in (
        "cache_entries",
        "revocations",
        "download_sessions",
        "token_sessions",
        "token_uses",
        "reservation_charges",
        "reservations",
        "quota_counters",
        "rate_states",
        "download_records",
        "issued_tokens",
        "dataset_policies",
        "organization_policies",
        "grants",
        "dataset_versions",
        "dataset_tags",
        "datasets",
        "api_keys",
        "memberships",
        "users",
        "organizations",
    ):
        op.drop_table(table)
