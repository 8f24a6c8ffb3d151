"""A phone number's notificationPlan (AVA's e-mail call summaries).

`phone_numbers.notification_plan` holds the number's `notificationPlan` as the API took it
(validated by `voice.notification_plan`); per call it is merged over the assistant's. NULL: the
number has none, and the assistant's plan alone applies.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("phone_numbers", sa.Column("notification_plan", JSON, nullable=True))


def downgrade() -> None:
    # SQLite drops a column through a copy of the table (storage.migrate runs it with its
    # foreign keys off, so nothing cascades).
    with op.batch_alter_table("phone_numbers") as batch:
        batch.drop_column("notification_plan")
