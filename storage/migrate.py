"""Schema migrations, run programmatically (there is no alembic.ini to find).

`ava db upgrade` calls `upgrade(url)`; the server calls `ensure_migrated(engine)` at startup and
refuses to run on a schema it does not know, rather than failing later mid-call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import display_url, make_engine
from storage.errors import NotMigrated
from storage.keys import ServerKey, check_key_sync

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "ensure_migrated",
    "head_revision",
    "upgrade",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_Action = Callable[[Config], None]


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (for `alembic` commands in code)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Revision modules must be importable names: the migrations ship as a package.
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    if url is not None:
        # Not set_main_option: configparser would choke on the %-escapes of a URL's password.
        config.attributes["url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError("no migrations found")
    return head


async def upgrade(
    url: str,
    revision: str = "head",
    *,
    secret_key: str | None = None,
    key_source: str = "AVA_SECRET_KEY",
) -> None:
    """Migrate the database at `url` up to `revision` (the newest by default). `secret_key`
    (the server's) encrypts secrets older versions stored in plain text (revisions 0002 and
    0006) and is checked against, or recorded as, the key the database was set up with: a
    different one raises SecretKeyMismatch before anything changes. `key_source` says where
    the key came from, for that message."""
    await _run(url, lambda config: command.upgrade(config, revision), secret_key, key_source)


async def downgrade(
    url: str,
    revision: str,
    *,
    secret_key: str | None = None,
    key_source: str = "AVA_SECRET_KEY",
) -> None:
    """Migrate down to `revision` ("base" drops everything AVA created)."""
    await _run(url, lambda config: command.downgrade(config, revision), secret_key, key_source)


async def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return await _current(engine)
    finally:
        await engine.dispose()


async def ensure_migrated(engine: AsyncEngine) -> None:
    """Raise `NotMigrated` unless the database is exactly at this code's head revision."""
    current, head = await _current(engine), head_revision()
    if current == head:
        return
    where = display_url(engine.url)
    scripts = ScriptDirectory.from_config(alembic_config())
    known = {script.revision for script in scripts.walk_revisions()}
    if current is not None and current not in known:
        # A newer AVA migrated this database; running old code on it could corrupt records.
        raise NotMigrated(
            f"database at {where} is at revision {current}, which this version of AVA does not "
            f"know (its newest is {head}): upgrade AVA"
        )
    raise NotMigrated(
        f"database at {where} is not migrated (at {current or 'no revision'}, need {head}): "
        "run `ava db upgrade`"
    )


def _check_foreign_keys(connection: Connection) -> None:
    """With SQLite's foreign keys off during the migration, nothing checked them: a row left
    pointing nowhere fails the migration (rolled back) instead of surfacing later."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")


async def _current(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def _run(
    url: str, action: _Action, secret_key: str | None, key_source: str = "AVA_SECRET_KEY"
) -> None:
    engine = make_engine(url, foreign_keys=False)  # see make_engine: SQLite's batch ALTERs
    key = ServerKey(secret_key, key_source) if secret_key else None
    try:
        async with engine.begin() as connection:

            def run(sync_connection: Connection) -> None:
                config = alembic_config(url)
                config.attributes["connection"] = sync_connection
                if key is not None:
                    # A database that knows its key refuses another before any migration runs.
                    check_key_sync(sync_connection, key)
                    config.attributes["secret_key"] = key.value
                    config.attributes["key_source"] = key.source
                action(config)
                if key is not None:
                    check_key_sync(sync_connection, key)  # recorded, if the schema has room now
                _check_foreign_keys(sync_connection)

            await connection.run_sync(run)
    finally:
        await engine.dispose()
