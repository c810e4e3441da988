"""Record byte ranges, expected sizes and logical downloads in the audit trail."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_records = sa.table(
    "download_records",
    sa.column("status", sa.Text),
    sa.column("logical", sa.Boolean),
)


def upgrade() -> None:
    # Plain ADD COLUMN on both databases: no copy of what may be a very large table.
    op.add_column("download_records", sa.Column("byte_range", sa.Text))
    op.add_column("download_records", sa.Column("bytes_expected", sa.BigInteger))
    op.add_column("download_records", sa.Column("session_key", sa.Text))
    op.add_column(
        "download_records",
        sa.Column("logical", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    # Before sessions existed every allowed request was counted as one download, so the
    # records written then keep counting that way: all but refusals are logical.
    op.execute(_records.update().where(_records.c.status != "denied").values(logical=True))


def downgrade() -> None:
    with op.batch_alter_table("download_records") as batch:
        batch.drop_column("logical")
        batch.drop_column("session_key")
        batch.drop_column("bytes_expected")
        batch.drop_column("byte_range")
