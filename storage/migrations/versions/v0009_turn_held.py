"""A turn's `held` latency stage.

`call_turns.held`: seconds a reply's audio was ready but held back on purpose
(stopSpeakingPlan.backoffSeconds after a barge-in; see voice.events.TurnLatency), which `server`
no longer includes. NULL on turns recorded before this revision (and, like the other stages, on
turns that produced no audio); they read as 0, as nothing was measured then.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("call_turns", sa.Column("held", sa.Float(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column through a copy of the table (storage.migrate runs it with its
    # foreign keys off, so nothing cascades).
    with op.batch_alter_table("call_turns") as batch:
        batch.drop_column("held")
