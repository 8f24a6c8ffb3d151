"""Async engines and sessions for SQLite (embedded default) and PostgreSQL (production, CI).

URL conventions: `sqlite+aiosqlite:///path/ava.db` and `postgresql+asyncpg://user@host/db`.
The driver-less spellings (`sqlite:///…`, `postgresql://…`, `postgres://…`) are accepted and
given the async driver, so operators can paste the URL their hosting provider shows them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

__all__ = [
    "default_sqlite_url",
    "display_url",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
]

log = logging.getLogger("ava.storage.engine")

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
    write_queue_timeout: float | None = 60.0,
    echo: bool = False,
    foreign_keys: bool = True,
) -> AsyncEngine:
    """An engine for `url`; pool options apply to PostgreSQL, `busy_timeout_ms`,
    `write_queue_timeout` and `foreign_keys` to SQLite.

    `write_queue_timeout`: how long a write waits behind this process's other SQLite writers
    (see `_WriteQueue`) before trying SQLite's own lock anyway; None turns the queue off.
    Migrations turn SQLite's foreign keys off: a batch ALTER copies a table and drops the old
    one, and that drop would cascade to every row referencing it (they check
    `PRAGMA foreign_key_check` after)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout_ms, echo, foreign_keys, write_queue_timeout)
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
    url: URL,
    busy_timeout_ms: int,
    echo: bool,
    foreign_keys: bool = True,
    write_queue_timeout: float | None = 60.0,
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

    if not in_memory and write_queue_timeout is not None:
        _WriteQueue(write_queue_timeout).install(engine)
    return engine


# Statements that make pysqlite open a transaction (it BEGINs before DML, not before SELECT) or
# that take SQLite's write lock on their own.
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER)\b", re.IGNORECASE)


class _WriteQueue:
    """This process's SQLite write transactions, one at a time, first come first served.

    SQLite has one writer lock per file. A transaction holds it from its first write to its
    COMMIT, and every statement in between is a hop to the connection's thread and back
    through the event loop. While the loop lags (a saturated core), the holder keeps the lock
    for all that time, and the other connections' threads poll for it in SQLite's busy handler,
    in no order, until `busy_timeout` passes and they fail with "database is locked": stream
    starts and recorder writes were lost that way at 80-100 concurrent calls. Here a writer
    waits in an asyncio.Lock (FIFO) before its first write statement instead, and gives the
    lock back when its transaction ends, so a busy process queues its writes rather than
    failing them. Reads never wait: in WAL mode they need no lock.

    The wait is bounded by `timeout`; after it the statement goes to SQLite as before (its
    busy handler then decides), so a writer that waits on work which itself waits for this
    lock stalls for a while instead of forever. A task that already holds the lock through one
    connection and writes through another is not made to wait for itself either. Other
    processes (the CLI beside a server) are not in this queue: busy_timeout still covers them.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holder: dict[Any, Any] | None = None  # the holding connection's pool-entry info
        self._owner: asyncio.Task[Any] | None = None

    def install(self, engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", self._before_execute)
        # The lock goes back once SQLite's COMMIT/ROLLBACK has returned (SQLAlchemy's "commit"
        # event fires before it is sent): the next writer then finds SQLite's lock free too,
        # however slow the fsync. The dialect's methods serve the engine and its pool alike.
        dialect = sync_engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(connection: PoolProxiedConnection) -> None:
            try:
                commit(connection)
            finally:
                self._ended(connection)

        def do_rollback(connection: PoolProxiedConnection) -> None:
            try:
                rollback(connection)
            finally:
                self._ended(connection)

        dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]
        # A connection returned, invalidated or closed mid-transaction must not keep the lock.
        for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
            event.listen(sync_engine.pool, name, self._entry_ended)

    def _before_execute(
        self,
        conn: Connection,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        if not _WRITE.match(statement) or self._holder is conn.info or not in_greenlet():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = asyncio.current_task(loop)
        if self._loop is not loop and (self._lock is None or not self._lock.locked()):
            # asyncio.Lock belongs to one loop; tests (and `asyncio.run` per CLI command) make
            # several in turn.
            self._lock, self._loop = asyncio.Lock(), loop
        lock = self._lock
        if lock is None or self._loop is not loop or (lock.locked() and self._owner is task):
            return
        try:
            await_(self._acquire(lock))
        except TimeoutError:
            log.warning(
                "waited %.0f s for this process's other SQLite writers; writing anyway",
                self._timeout,
            )
            return
        self._holder, self._owner = conn.info, task

    async def _acquire(self, lock: asyncio.Lock) -> None:
        # asyncio.timeout, not wait_for: no task per acquire, and a free lock is taken without
        # a trip through the (lagging) loop.
        async with asyncio.timeout(self._timeout):
            await lock.acquire()

    def _ended(self, connection: PoolProxiedConnection) -> None:
        # Engine setup's first connect passes a connection without `info`; it holds nothing.
        if self._holder is not None:
            self._release(connection.info)

    def _entry_ended(self, *args: Any) -> None:
        record = next((a for a in args if isinstance(a, ConnectionPoolEntry)), None)
        if record is not None:
            self._release(record.info)

    def _release(self, info: dict[Any, Any]) -> None:
        if self._holder is not info or self._lock is None:
            return
        self._holder = self._owner = None
        self._lock.release()


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
