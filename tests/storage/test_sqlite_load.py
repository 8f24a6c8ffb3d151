"""SQLite under load: with the event loop lagging, this process's writers queue (storage.engine's
write queue) instead of failing with "database is locked".

Each simulated call does what a live one does to the database: uses its stream token, then
writes a recorder batch (messages and an event) every 100-300 ms, then ends its row. Meanwhile a
task blocks the loop now and then, as a saturated core does, and busy_timeout is short so that
the failure shows in seconds rather than the production 5 s.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.calls import CallStore
from storage.engine import make_engine, make_sessionmaker
from storage.tables import CallMessageRow, CallRow, StreamTokenUsedRow, utcnow

CALLS = 100
BATCHES = 3  # recorder batches per call
BUSY_TIMEOUT_MS = 500


@dataclass
class Load:
    locked: int = 0  # writes that failed with "database is locked"
    writes: int = 0  # writes that committed
    waits: list[float] = field(default_factory=list)  # seconds from asking to committed


async def _timed(load: Load, write: Awaitable[object]) -> bool:
    began = time.perf_counter()
    try:
        await write
    except OperationalError as exc:
        if "database is locked" not in str(exc):
            raise
        load.locked += 1
        return False
    load.writes += 1
    load.waits.append(time.perf_counter() - began)
    return True


async def _call(calls: CallStore, load: Load, rng: random.Random, batches: int) -> None:
    call_id = str(uuid.uuid4())
    expires = datetime.now(UTC) + timedelta(minutes=5)
    await asyncio.sleep(rng.uniform(0, 0.5))  # calls arrive over half a second
    if not await _timed(load, calls.use_stream_token(str(uuid.uuid4()), expires)):
        return  # the stream was refused
    if not await _timed(load, _start(calls, call_id)):
        return  # no row to write to
    for n in range(batches):
        await asyncio.sleep(rng.uniform(0.1, 0.3))
        await _timed(load, _batch(calls, call_id, n))
    await _timed(load, calls.finish_call(call_id, "customer-ended-call"))


async def _start(calls: CallStore, call_id: str) -> None:
    async with calls.batch() as w:
        await w.start_call(call_id, started_at=datetime.now(UTC), type="inboundPhoneCall")


async def _batch(calls: CallStore, call_id: str, n: int) -> None:
    async with calls.batch() as w:
        for role in ("user", "assistant"):
            await w.add_message(call_id, role, f"{role} {n}", time=n, seconds_from_start=n)
        await w.add_event(call_id, "barge-in", {"n": n})


async def _lag(stop: asyncio.Event, rng: random.Random) -> None:
    """Block the loop 50-200 ms at a time with short breaks: a core busy with audio work."""
    while not stop.is_set():
        time.sleep(rng.uniform(0.05, 0.2))  # noqa: ASYNC251 -- blocking the loop is the point
        await asyncio.sleep(rng.uniform(0.05, 0.15))


async def run_load(
    engine: AsyncEngine, *, calls: int = CALLS, batches: int = BATCHES, seed: int = 7
) -> Load:
    store = CallStore(make_sessionmaker(engine))
    load, rng, stop = Load(), random.Random(seed), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        lagger = tasks.create_task(_lag(stop, random.Random(seed + 1)))
        seeds = [rng.random() for _ in range(calls)]
        await asyncio.gather(*(_call(store, load, random.Random(s), batches) for s in seeds))
        stop.set()
        await lagger
    return load


def sqlite_copy(template: Path, directory: Path) -> str:
    path = directory / "load.db"
    shutil.copyfile(template, path)
    return f"sqlite+aiosqlite:///{path}"


async def test_queued_writers_all_commit_while_the_loop_lags(
    sqlite_template: Path, tmp_path: Path
) -> None:
    engine = make_engine(sqlite_copy(sqlite_template, tmp_path), busy_timeout_ms=BUSY_TIMEOUT_MS)
    try:
        load = await run_load(engine)
        async with engine.connect() as connection:
            tokens = await connection.scalar(select(func.count()).select_from(StreamTokenUsedRow))
            ended = await connection.scalar(
                select(func.count()).select_from(CallRow).where(CallRow.status == "ended")
            )
            messages = await connection.scalar(select(func.count()).select_from(CallMessageRow))
    finally:
        await engine.dispose()
    assert load.locked == 0
    assert (tokens, ended, messages) == (CALLS, CALLS, CALLS * BATCHES * 2)


async def test_without_the_queue_the_same_load_fails_with_database_is_locked(
    sqlite_template: Path, tmp_path: Path
) -> None:
    # The setup before the queue: only SQLite's busy handler arbitrates between connections.
    # This is what the test above guards against; if it stops failing here, the load no longer
    # reproduces the problem and the test above proves nothing.
    url = sqlite_copy(sqlite_template, tmp_path)
    engine = make_engine(url, busy_timeout_ms=BUSY_TIMEOUT_MS, write_queue_timeout=None)
    try:
        load = await run_load(engine)
    finally:
        await engine.dispose()
    assert load.locked > 0


async def test_a_task_writing_through_a_second_session_does_not_wait_for_itself(
    sqlite_template: Path, tmp_path: Path
) -> None:
    # Nested write transactions in one task: the queue must not hang on its own entry; SQLite's
    # busy handler answers, as it did before the queue.
    engine = make_engine(sqlite_copy(sqlite_template, tmp_path), busy_timeout_ms=100)
    sessions = make_sessionmaker(engine)
    expires = utcnow() + timedelta(minutes=5)
    try:
        async with sessions() as outer, outer.begin():
            outer.add(StreamTokenUsedRow(token_id="outer", expires_at=expires))
            await outer.flush()
            async with asyncio.timeout(5):
                try:
                    async with sessions() as inner, inner.begin():
                        inner.add(StreamTokenUsedRow(token_id="inner", expires_at=expires))
                except OperationalError as exc:
                    assert "database is locked" in str(exc)
                else:
                    raise AssertionError("the nested write took SQLite's lock from the outer one")
        # The failed inner transaction gave the queue back: another task writes at once.
        async with asyncio.timeout(5):
            assert await CallStore(sessions).use_stream_token("after", expires)
    finally:
        await engine.dispose()


def test_postgresql_and_in_memory_engines_have_no_write_queue() -> None:
    # PostgreSQL has row locks and no single writer; an in-memory SQLite engine has one shared
    # connection. Neither gets the queue (creating an engine connects nothing).
    for url in ("postgresql://ava@127.0.0.1/ava", "sqlite+aiosqlite:///:memory:"):
        dialect = make_engine(url).sync_engine.dialect
        assert "do_commit" not in vars(dialect), url
