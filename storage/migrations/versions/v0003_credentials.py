"""Tenants' provider credentials (Vapi's /credential), sealed at rest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 20:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        # A Fernet token of the credential's JSON (apiKey and the provider's other fields).
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credentials"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_credentials_tenant_id_tenants",
            ondelete="CASCADE",
        ),  # fmt: skip
    )
    op.create_index(
        "ix_credentials_tenant_provider", "credentials", ["tenant_id", "provider", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_credentials_tenant_provider", table_name="credentials")
    op.drop_table("credentials")
