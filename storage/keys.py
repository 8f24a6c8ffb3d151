"""The server's secret key: where a dev-mode key lives, and the fingerprint a database keeps of it.

Everything secret at rest hangs off one key: API key hashes, sealed webhook secrets and headers,
Twilio credentials, stream-token signatures. A process with another key does not fail by itself:
its API keys never match and its stream tokens never verify, so the operator sees 401s and no
reason. Hence the database records a fingerprint of the key it was set up with (written by the
first `ava db upgrade` or the first process to open it), and every process, server and CLI,
compares its key with it first and refuses a different one with a message that says so.

Where the key comes from: AVA_SECRET_KEY; in dev mode only, without it, a key generated once
into a file next to the SQLite database (`<database file>.key`, 0600), so `ava key create` run
from any directory finds the key `ava serve` uses. A PostgreSQL database always needs
AVA_SECRET_KEY: there is no file beside it that every process can find.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.crypto import SEALED, SecretBox, derive_subkey
from storage.engine import display_url, normalize_url
from storage.errors import DecryptionFailed, StorageError

__all__ = [
    "KEY_FINGERPRINT",
    "SERVER_META",
    "SecretKeyError",
    "SecretKeyMismatch",
    "SecretKeyMissing",
    "ServerKey",
    "check_key",
    "check_key_sync",
    "check_sealed_with",
    "dev_key_path",
    "key_fingerprint",
    "probe_key",
    "resolve_server_key",
    "stream_signing_key",
]

SERVER_META = "server_meta"  # (name, value) rows about the database itself (migration 0006)
KEY_FINGERPRINT = "key_fingerprint"
_SHOWN = 12  # hex digits of a fingerprint shown in messages: enough to tell two keys apart
_LEGACY_FILE = "secret.key"  # where earlier versions kept the dev key: data_dir/secret.key

_meta = sa.table(SERVER_META, sa.column("name", sa.String), sa.column("value", sa.String))


class SecretKeyError(StorageError):
    """The server's secret key is missing or is not the one the database was set up with."""


class SecretKeyMissing(SecretKeyError):
    """No AVA_SECRET_KEY where one is required (outside dev mode, or for PostgreSQL)."""


class SecretKeyMismatch(SecretKeyError):
    """The database was set up with another key; nothing secret in it would open or match."""


@dataclass(frozen=True, slots=True)
class ServerKey:
    """The key, and where it came from (for messages: "AVA_SECRET_KEY" or the key file)."""

    value: str = field(repr=False)
    source: str


def key_fingerprint(secret_key: str) -> str:
    """32 hex digits identifying `secret_key`: a keyed derivation (HKDF with its own purpose),
    so it is unrelated to every key AVA uses and no plain hash of the key is stored."""
    return derive_subkey(secret_key, "key-fingerprint", 16).hex()


def stream_signing_key(secret_key: str) -> bytes:
    """The key that signs media-stream tokens: derived from the server's secret, so every
    process with that secret (every process on the same database) verifies the others'."""
    return derive_subkey(secret_key, "stream-token")


def dev_key_path(database_url: str) -> Path | None:
    """Where dev mode keeps a generated key for this database: `<file>.key` beside a SQLite
    file; None for PostgreSQL and in-memory SQLite."""
    url = normalize_url(database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if url.query.get("mode") == "memory" or database.startswith("file:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".key")


def resolve_server_key(configured: str, database_url: str, *, dev_mode: bool) -> ServerKey:
    """AVA_SECRET_KEY (`configured`), or in dev mode the key kept beside the SQLite database
    (generated on first use). Raises SecretKeyMissing when neither applies, saying what to set."""
    if configured:
        return ServerKey(configured, "AVA_SECRET_KEY")
    if not dev_mode:
        raise SecretKeyMissing(
            "AVA_SECRET_KEY is not set: outside dev mode (TWILIO_AUTH_TOKEN is set) the server's "
            "secret key must be configured. Set AVA_SECRET_KEY to a long random value (e.g. the "
            "output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), the "
            "same for `ava serve` and every `ava` command, and keep it: API keys, webhook "
            "secrets and Twilio credentials in the database depend on it"
        )
    path = dev_key_path(database_url)
    if path is None:
        raise SecretKeyMissing(
            f"AVA_SECRET_KEY is not set, and {display_url(make_url(database_url))} has no "
            "file beside it to keep a generated key in (dev mode does that only for a SQLite "
            "database file): set AVA_SECRET_KEY, the same for `ava serve` and every `ava` command"
        )
    return ServerKey(_read_or_create(path), f"the dev key in {path}")


def _read_or_create(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    legacy = path.parent / _LEGACY_FILE
    value = legacy.read_text().strip() if legacy.exists() else secrets.token_urlsafe(32)
    # O_EXCL: two processes starting at once must not each write (and use) a different key.
    # 0600: the key opens every secret in the database; only the server's user may read it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(value)
    return value


def probe_key(connection: Connection, box: SecretBox) -> None:
    """Raise DecryptionFailed if `box` cannot open a secret the database already holds (a key
    about to be adopted must be the one that sealed them). Reads at most a few rows."""
    tokens: list[str] = []
    inspector = sa.inspect(connection)
    if inspector.has_table("phone_numbers"):
        numbers = sa.table("phone_numbers", sa.column("credentials_encrypted", sa.Text))
        credential = connection.scalar(sa.select(numbers.c.credentials_encrypted).limit(1))
        if credential:
            tokens.append(credential)
    for name, column in (("assistants", "config"), ("tools", "config")):
        if not inspector.has_table(name):
            continue
        table = sa.table(name, sa.column(column, sa.JSON))
        text = sa.cast(table.c[column], sa.Text)
        value = connection.scalar(
            sa.select(table.c[column]).where(text.like(f"%{SEALED}%")).limit(1)
        )
        token = _first_sealed(value)
        if token is not None:
            tokens.append(token)
    for token in tokens:
        box.decrypt(token)


def _first_sealed(value: object) -> str | None:
    stack = [value]
    while stack:  # iterative: stored configs may nest deeply
        item = stack.pop()
        if isinstance(item, dict):
            token = item.get(SEALED)
            if len(item) == 1 and isinstance(token, str):
                return token
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_sealed_with(connection: Connection, key: ServerKey) -> None:
    """Raise SecretKeyMismatch unless `key` opens the secrets the database already holds: a
    database without a fingerprint adopts a key only if it is the one that sealed them."""
    try:
        probe_key(connection, SecretBox.from_secret(key.value))
    except DecryptionFailed as exc:
        raise SecretKeyMismatch(
            f"the database at {display_url(connection.engine.url)} holds secrets sealed with a "
            f"different key than {key.source} (fingerprint "
            f"{key_fingerprint(key.value)[:_SHOWN]}…): set AVA_SECRET_KEY to the key it was "
            "created with"
        ) from exc


def check_key_sync(connection: Connection, key: ServerKey) -> None:
    """Compare `key` with the fingerprint the database records; record it if there is none yet
    (after checking it opens the secrets already stored). Raises SecretKeyMismatch. A database
    older than migration 0006 has nowhere to record it: nothing happens."""
    if not sa.inspect(connection).has_table(SERVER_META):
        return
    where = display_url(connection.engine.url)
    mine = key_fingerprint(key.value)
    stored = _stored_fingerprint(connection)
    if stored is None:
        check_sealed_with(connection, key)
        # Two processes adopting at once: the second insert fails (IntegrityError) and
        # `check_key` compares again with what the first recorded.
        connection.execute(sa.insert(_meta).values(name=KEY_FINGERPRINT, value=mine))
    elif not hmac.compare_digest(stored, mine):
        raise SecretKeyMismatch(
            f"the database at {where} was set up with a different AVA_SECRET_KEY (fingerprint "
            f"{stored[:_SHOWN]}…, yours {mine[:_SHOWN]}… from {key.source}): set AVA_SECRET_KEY "
            "to the key it was created with"
        )


def _stored_fingerprint(connection: Connection) -> str | None:
    value = connection.scalar(sa.select(_meta.c.value).where(_meta.c.name == KEY_FINGERPRINT))
    return None if value is None else str(value)


async def check_key(engine: AsyncEngine, key: ServerKey) -> None:
    """`check_key_sync` in its own transaction (committed: the fingerprint stays recorded)."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(check_key_sync, key)
    except (IntegrityError, OperationalError):
        # Another process recorded its key between our read and insert (SQLite may report the
        # lost race as "database is locked"): compare with what it recorded.
        async with engine.begin() as connection:
            await connection.run_sync(check_key_sync, key)
