"""Encrypt the webhook/tool secrets that earlier versions stored in plain JSON.

`server.secret` and legacy `serverUrlSecret` in `assistants.config`, `tools.config` and
`phone_numbers.server` become `{"$sealed": "<Fernet token>"}` (see `storage.crypto`). The key is
the server's secret, passed by `storage.migrate.upgrade(url, secret_key=...)` (`ava db upgrade`
does). Without it the migration still runs on a database that holds no plain secret (a new one),
and refuses, naming the fix, when there is something to encrypt: writing a key-less database
forward would leave the secrets in plain text under a revision that promises otherwise.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 03:00:00
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from storage.crypto import SecretBox, open_secrets, seal_secrets

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# (table, JSON column, whether the column itself is a `server` object)
_COLUMNS = (("assistants", "config", False), ("tools", "config", False),
            ("phone_numbers", "server", True))  # fmt: skip


def _box() -> SecretBox | None:
    secret = context.config.attributes.get("secret_key")
    return SecretBox.from_secret(secret) if secret else None


def _rewrite(direction: str, change: Callable[[Any, SecretBox, bool], Any]) -> None:
    connection = op.get_bind()
    box = _box()
    for name, column, is_server in _COLUMNS:
        table = sa.table(name, sa.column("id", sa.String), sa.column(column, JSON))
        rows = connection.execute(sa.select(table.c.id, table.c[column])).all()
        for row_id, value in rows:
            if value is None:
                continue
            if box is None:
                if change(value, _NO_BOX, is_server) != value:
                    raise RuntimeError(
                        f"{name} {row_id} holds a webhook secret to {direction}, and no key was "
                        "given: run `ava db upgrade` with AVA_SECRET_KEY (or the data dir's "
                        "secret.key) as the server uses it"
                    )
                continue
            new = change(value, box, is_server)
            if new != value:
                connection.execute(
                    sa.update(table).where(table.c.id == row_id).values({column: new})
                )


class _Probe(SecretBox):
    """Stands in for the key when there is none: a row it changes is a row that needed one."""

    def __init__(self) -> None:
        pass

    def encrypt(self, plaintext: str) -> str:
        return "\0needs-a-key"

    def decrypt(self, token: str) -> str:
        return "\0needs-a-key"


_NO_BOX = _Probe()


def _seal(value: Any, box: SecretBox, is_server: bool) -> Any:
    return seal_secrets(value, box, in_server=is_server)


def _open(value: Any, box: SecretBox, is_server: bool) -> Any:
    return open_secrets(value, box)


def upgrade() -> None:
    _rewrite("encrypt", _seal)


def downgrade() -> None:
    _rewrite("decrypt", _open)
