"""Owned numbers and per-tenant call limits; single-use stream tokens.

`tenants.max_calls`: the operator's per-tenant override of AVA_TENANT_MAX_CALLS (NULL: the
default). `stream_tokens_used`: the id of every media-stream token already used, until the token
expires, so a replayed token is refused by whichever process it reaches.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 20:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD/DROP COLUMN (SQLite ≥ 3.35 and PostgreSQL both have it), never batch mode:
    # batch rebuilds `tenants` by copy-and-drop, and with foreign keys on, dropping the old table
    # cascades into every tenant's assistants, numbers and calls.
    op.add_column("tenants", sa.Column("max_calls", sa.Integer(), nullable=True))
    op.create_table(
        "stream_tokens_used",
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_stream_tokens_used"),
    )
    op.create_index("ix_stream_tokens_used_expires_at", "stream_tokens_used", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_tokens_used_expires_at", table_name="stream_tokens_used")
    op.drop_table("stream_tokens_used")
    op.drop_column("tenants", "max_calls")
