"""Async engines and sessions for SQLite (embedded default) and PostgreSQL (production, CI).

URL conventions: `sqlite+aiosqlite:///path/ava.db` and `postgresql+asyncpg://user@host/db`.
The driver-less spellings (`sqlite:///…`, `postgresql://…`, `postgres://…`) are accepted and
given the async driver, so operators can paste the URL their hosting provider shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

__all__ = [
    "default_sqlite_url",
    "display_url",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def normalize_url(url: str) -> URL:
    """Parse `url` and give it the async driver AVA uses for its backend."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db"
        )
    return parsed


def display_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and error messages."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def default_sqlite_url(data_dir: Path) -> str:
    """`sqlite+aiosqlite:///{data_dir}/ava.db`, creating `data_dir` if needed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{data_dir.resolve() / 'ava.db'}"


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 30.0,
    pool_recycle: int = 1800,
    busy_timeout_ms: int = 5000,
    echo: bool = False,
    foreign_keys: bool = True,
) -> AsyncEngine:
    """An engine for `url`; pool options apply to PostgreSQL, `busy_timeout_ms` and
    `foreign_keys` to SQLite. Migrations turn SQLite's foreign keys off: a batch ALTER copies a
    table and drops the old one, and that drop would cascade to every row referencing it (they
    check `PRAGMA foreign_key_check` after)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout_ms, echo, foreign_keys)
    return create_async_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # Managed PostgreSQL and PgBouncer drop idle connections; recycling and pre-ping turn
        # that into a reconnect instead of a failed write from the call recorder.
        pool_recycle=pool_recycle,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": "ava"}},
    )


def _sqlite_engine(
    url: URL, busy_timeout_ms: int, echo: bool, foreign_keys: bool = True
) -> AsyncEngine:
    in_memory = url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    options: dict[str, Any] = {"echo": echo}
    if in_memory:
        # One shared connection, or every checkout would see its own empty database.
        options["poolclass"] = StaticPool
    elif url.database and not url.database.startswith("file:"):
        _create_private(Path(url.database))
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers (the API) never block the writer (the call recorder) and vice versa.
            cursor.execute("PRAGMA journal_mode=WAL")
            # SQLite ignores foreign keys unless asked, per connection.
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            # Wait for a concurrent writer instead of failing at once with "database is locked".
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            # FULL: a committed turn survives power loss, not only a process crash. Commits are
            # per batch of events, a few per second per call, so the extra fsync is affordable.
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    return engine


def _create_private(path: Path) -> None:
    """Create the database file 0600 (an empty file is an empty SQLite database): it holds
    call transcripts and API key hashes, and SQLite gives its -wal and -shm files the database
    file's permissions. An existing file is left as the operator has it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except (FileExistsError, FileNotFoundError):  # exists; or no directory: SQLite says so
        pass


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: attributes read after commit would otherwise trigger implicit
    # (lazy) IO, which async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False)
