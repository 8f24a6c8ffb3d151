"""What a call leaves behind: its analysis and its recording; a tenant's recording retention.

`calls.analysis` holds Vapi's `call.analysis` (summary, structuredData, successEvaluation, and
AVA's record of an analysis that failed or timed out); `calls.recording` describes the stored
recording (store keys, format, channels, duration, state) — the URLs are derived from it when
the call is read, never stored, so a signed URL cannot outlive its expiry in the database.
`tenants.recording_retention_days`: recordings older than this are purged (None: the operator's
default).

Scheduled calls (Vapi's `schedulePlan`, and each call of a `customers[]` batch): status
`scheduled` joins the status check, and `calls.scheduled_at` is when the call may be placed
(indexed with the status: every node's scheduler asks for the due ones).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_STATUSES = "'queued', 'ringing', 'in-progress', 'forwarding', 'ended'"


# The batch (a copy of `calls` on SQLite) runs with SQLite's foreign keys off (storage.migrate):
# dropping the old table would otherwise cascade to every message, turn and event of every call.
def upgrade() -> None:
    op.add_column("tenants", sa.Column("recording_retention_days", sa.Integer(), nullable=True))
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("analysis", JSON, nullable=True))
        batch.add_column(sa.Column("recording", JSON, nullable=True))
        batch.add_column(sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True))
        # 0001 named it twice over (its names went through the naming convention again)
        batch.drop_constraint(op.f("ck_calls_ck_calls_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_calls_status"), f"status IN ('scheduled', {_STATUSES})"
        )
    op.create_index("ix_calls_status_scheduled", "calls", ["status", "scheduled_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_status_scheduled", table_name="calls")
    # A scheduled call did not exist before: it goes, as it would not have been placed.
    op.execute("DELETE FROM calls WHERE status = 'scheduled'")
    with op.batch_alter_table("calls") as batch:
        batch.drop_constraint(op.f("ck_calls_status"), type_="check")
        batch.create_check_constraint(op.f("ck_calls_ck_calls_status"), f"status IN ({_STATUSES})")
        batch.drop_column("scheduled_at")
        batch.drop_column("recording")
        batch.drop_column("analysis")
    op.drop_column("tenants", "recording_retention_days")
