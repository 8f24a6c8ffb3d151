"""Databases for the storage tests: every store runs on SQLite and on PostgreSQL.

SQLite: migrated once per session into a template file, copied per test (fast, isolated).
PostgreSQL: a randomly named database is created on the server's `test` database (asyncpg),
migrated once, emptied (TRUNCATE) before each test and dropped at the end of the session. With
CI=true an unreachable PostgreSQL fails the postgres tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.calls import CallStore
from storage.crypto import SecretBox
from storage.engine import make_engine, make_sessionmaker
from storage.migrate import upgrade
from storage.resources import AssistantStore, PhoneNumberStore, ToolStore
from storage.tables import Base
from storage.tenants import TenantStore

# Tests may read the environment; the application code may not.
POSTGRES_ADMIN_URL = os.environ.get(
    "AVA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
SECRET = "storage-tests-secret-key"

T = TypeVar("T")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread, so sync fixtures can
    do async setup without touching the test's own event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_execute(sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for the duration of the block; yields its URL."""
    name = f"ava_test_{uuid.uuid4().hex[:12]}"
    try:
        run_async(lambda: _admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL)!r} is unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: postgres tests must run)")
        pytest.skip(reason)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        run_async(lambda: _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        run_async(lambda: upgrade(url))
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ava.db"
    run_async(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


async def _truncate(url: str) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "ava.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    run_async(lambda: _truncate(url))
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of each backend that no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
def calls(sessions: async_sessionmaker[AsyncSession]) -> CallStore:
    return CallStore(sessions)


@pytest.fixture
def tenants(sessions: async_sessionmaker[AsyncSession]) -> TenantStore:
    return TenantStore(sessions, secret_key=SECRET)


@pytest.fixture
def assistants(sessions: async_sessionmaker[AsyncSession]) -> AssistantStore:
    return AssistantStore(sessions, SecretBox.from_secret(SECRET))


@pytest.fixture
def tools(sessions: async_sessionmaker[AsyncSession]) -> ToolStore:
    return ToolStore(sessions, SecretBox.from_secret(SECRET))


@pytest.fixture
def phone_numbers(sessions: async_sessionmaker[AsyncSession]) -> PhoneNumberStore:
    return PhoneNumberStore(sessions, SecretBox.from_secret(SECRET))


async def database_text(engine: AsyncEngine, db_url: str) -> str:
    """Everything the database holds, as text: every row of every table, and for SQLite the raw
    bytes of the database and WAL files (so nothing hides in a page the ORM doesn't read)."""
    parts: list[str] = []
    async with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = (await connection.execute(select(table))).all()
            parts.extend(repr(tuple(row)) for row in rows)
    database = make_url(db_url).database
    if make_url(db_url).get_backend_name() == "sqlite" and database:
        parts.extend(_file_text(Path(database + suffix)) for suffix in ("", "-wal"))
    return "\n".join(parts)


def _file_text(path: Path) -> str:
    return path.read_bytes().decode("latin-1") if path.exists() else ""
