"""Engines, secret encryption, and migrations (on both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import Connection

from storage.crypto import SecretBox, derive_key
from storage.engine import default_sqlite_url, make_engine, normalize_url
from storage.errors import DecryptionFailed, NotMigrated
from storage.migrate import current_revision, downgrade, ensure_migrated, head_revision, upgrade
from storage.tables import Base

REPO = Path(__file__).resolve().parents[2]


def test_default_sqlite_url_creates_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "data"
    url = default_sqlite_url(data_dir)
    assert data_dir.is_dir()
    assert url == f"sqlite+aiosqlite:///{data_dir.resolve()}/ava.db"


def test_url_normalization() -> None:
    assert normalize_url("postgres://u:p@db/ava").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql://u@db/ava").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@db/ava")


async def test_sqlite_pragmas_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=1234)
    try:
        for _ in range(2):  # a second, concurrent connection gets them too
            async with engine.connect() as a, engine.connect() as b:
                for connection in (a, b):
                    pragma = connection.exec_driver_sql
                    assert (await pragma("PRAGMA journal_mode")).scalar() == "wal"
                    assert (await pragma("PRAGMA foreign_keys")).scalar() == 1
                    assert (await pragma("PRAGMA busy_timeout")).scalar() == 1234
    finally:
        await engine.dispose()


async def test_in_memory_sqlite_shares_one_database() -> None:
    engine = make_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 0
    finally:
        await engine.dispose()


def test_secret_box() -> None:
    box = SecretBox.from_secret("server secret")
    token = box.encrypt("auth-token")
    assert "auth-token" not in token and box.decrypt(token) == "auth-token"
    assert box.decrypt_json(box.encrypt_json({"a": "b"})) == {"a": "b"}
    assert derive_key("server secret") == derive_key("server secret") != derive_key("other")
    Fernet(derive_key("server secret").encode())  # a valid Fernet key

    with pytest.raises(DecryptionFailed):
        SecretBox.from_secret("wrong secret").decrypt(token)
    with pytest.raises(DecryptionFailed):
        box.decrypt(token[:-4] + "AAAA")
    with pytest.raises(ValueError, match="Fernet"):
        SecretBox("not a fernet key")
    with pytest.raises(ValueError):
        derive_key("")

    rotated = SecretBox(Fernet.generate_key().decode(), derive_key("server secret"))
    assert rotated.decrypt(token) == "auth-token"  # old values still readable after rotation


def test_no_alembic_ini_at_the_repo_root() -> None:
    assert not (REPO / "alembic.ini").exists()


async def test_ensure_migrated_upgrade_downgrade(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(NotMigrated, match=r"at no revision, need .*run `ava db upgrade`"):
            await ensure_migrated(engine)
        assert await current_revision(empty_db_url) is None

        await upgrade(empty_db_url)
        assert await current_revision(empty_db_url) == head_revision()
        await ensure_migrated(engine)

        await downgrade(empty_db_url, "base")
        assert await current_revision(empty_db_url) is None
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: c.dialect.get_table_names(c))
        assert set(names) <= {"alembic_version"}

        await upgrade(empty_db_url)
        await ensure_migrated(engine)
    finally:
        await engine.dispose()


async def test_migration_matches_the_tables(db_url: str) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_a_newer_schema_is_refused(empty_db_url: str) -> None:
    await upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
        with pytest.raises(NotMigrated, match="does not know"):
            await ensure_migrated(engine)
    finally:
        await engine.dispose()
