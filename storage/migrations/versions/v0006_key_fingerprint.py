"""The server key fingerprint the database was set up with; server.headers sealed.

`server_meta` holds named facts about the database; `key_fingerprint` identifies the server key
(storage/keys.py) so a process with another key is refused instead of answering 401 to every API
key it did not hash. With the key given (`ava db upgrade` passes it), the upgrade first checks it
opens the secrets already sealed (a database without a fingerprint adopts the current key, but
only the right one), then records its fingerprint; without it, the first process to open the
database records its key.

`server.headers` values (in `assistants.config`, `tools.config`, `phone_numbers.server` and a
call's transient assistant in `calls.metadata`) become `{"$sealed": …}` like `server.secret` in
revision 0002, with the same rule: without a key the upgrade runs only where there is nothing to
seal, and otherwise refuses, naming the fix.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 20:45:00
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from storage.crypto import SEALED, SecretBox, seal_secrets
from storage.keys import SERVER_META, ServerKey, check_key_sync, check_sealed_with

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# (table, JSON column, what in it is a config: "config", "server" or "call")
_COLUMNS = (("assistants", "config", "config"), ("tools", "config", "config"),
            ("phone_numbers", "server", "server"), ("calls", "metadata", "call"))  # fmt: skip

_Change = Callable[[Any, SecretBox, bool], Any]


def _key() -> ServerKey | None:
    secret = context.config.attributes.get("secret_key")
    source = context.config.attributes.get("key_source", "AVA_SECRET_KEY")
    return ServerKey(secret, source) if secret else None


def _rewrite(direction: str, change: _Change, box: SecretBox | None) -> None:
    connection = op.get_bind()
    for name, column, kind in _COLUMNS:
        table = sa.table(name, sa.column("id", sa.String), sa.column(column, JSON))
        # Only rows that mention headers at all: `calls` may be large.
        text = sa.cast(table.c[column], sa.Text)
        query = sa.select(table.c.id, table.c[column]).where(text.like("%headers%"))
        for row_id, value in connection.execute(query).all():
            new = _changed(value, kind, change, box or _NO_BOX)
            if new == value:
                continue
            if box is None:
                raise RuntimeError(
                    f"{name} {row_id} holds server.headers to {direction}, and no key was given: "
                    "run `ava db upgrade` with AVA_SECRET_KEY (in dev mode: the key file beside "
                    "the SQLite database) as the server uses it"
                )
            connection.execute(sa.update(table).where(table.c.id == row_id).values({column: new}))


def _changed(value: Any, kind: str, change: _Change, box: SecretBox) -> Any:
    if kind != "call":
        return change(value, box, kind == "server")
    # A call's metadata is the tenant's own JSON besides the transient assistant: only that.
    if not isinstance(value, dict) or not isinstance(value.get("assistant"), dict):
        return value
    return {**value, "assistant": change(value["assistant"], box, False)}


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
    # Secrets are sealed since 0002 (and left alone when sealed): this seals the headers.
    return seal_secrets(value, box, in_server=is_server)


def _open_headers(value: Any, box: SecretBox, is_server: bool) -> Any:
    """`value` with the sealed `server.headers` values opened, and nothing else (secrets stay
    sealed: that is revision 0002's format)."""
    if isinstance(value, list):
        return [_open_headers(v, box, False) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if is_server and key == "headers" and isinstance(item, dict):
            out[key] = {name: _opened(header, box) for name, header in item.items()}
        else:
            out[key] = _open_headers(item, box, key == "server")
    return out


def _opened(value: Any, box: SecretBox) -> Any:
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(SEALED), str):
        return box.decrypt(value[SEALED])
    return value


def upgrade() -> None:
    key = _key()
    box = None if key is None else SecretBox.from_secret(key.value)
    if key is not None:
        # Before anything is written: a wrong key must not seal anything, nor be adopted.
        check_sealed_with(op.get_bind(), key)
    _rewrite("encrypt", _seal, box)
    op.create_table(
        SERVER_META,
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=f"pk_{SERVER_META}"),
    )
    if key is not None:
        check_key_sync(op.get_bind(), key)  # records the fingerprint


def downgrade() -> None:
    key = _key()
    if key is not None:
        check_key_sync(op.get_bind(), key)  # a wrong key is refused before anything is opened
    _rewrite("decrypt", _open_headers, None if key is None else SecretBox.from_secret(key.value))
    op.drop_table(SERVER_META)
