"""Migration 0007 rebuilds `calls` (a new status in its check): on SQLite that is a copy of the
table, and nothing that references a call may be lost on the way, in either direction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from storage.engine import make_engine
from storage.migrate import current_revision, downgrade, head_revision, upgrade
from storage.tables import Base

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


async def _rows_of_0006(url: str) -> None:
    tables = Base.metadata.tables
    stamps = {"created_at": NOW, "updated_at": NOW}
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tables["tenants"]).values(id="t1", name="A", created_at=NOW)
            )
            await connection.execute(
                insert(tables["calls"]).values(
                    id="c1", tenant_id="t1", type="inboundPhoneCall", status="ended",
                    costs=[], metadata={}, **stamps,
                )
            )  # fmt: skip
            await connection.execute(
                insert(tables["call_messages"]).values(
                    call_id="c1", seq=0, role="user", message="hello", time=0,
                    seconds_from_start=1.0,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()


async def _count(url: str, sql: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(text(sql))).scalar_one())
    finally:
        await engine.dispose()


async def test_0007_keeps_every_calls_messages_and_takes_scheduled_calls(
    empty_db_url: str,
) -> None:
    await upgrade(empty_db_url, "0006")
    await _rows_of_0006(empty_db_url)

    await upgrade(empty_db_url)
    assert await current_revision(empty_db_url) == head_revision()
    assert await _count(empty_db_url, "SELECT count(*) FROM call_messages") == 1
    engine = make_engine(empty_db_url)
    calls = Base.metadata.tables["calls"]
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(calls).values(
                    id="c2", tenant_id="t1", type="outboundPhoneCall", status="scheduled",
                    scheduled_at=NOW, costs=[], metadata={}, created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
            stored = await connection.execute(select(calls.c.status).where(calls.c.id == "c2"))
            assert stored.scalar_one() == "scheduled"
        # the check still refuses what is no status at all
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE calls SET status = 'paused' WHERE id = 'c1'"))
    finally:
        await engine.dispose()

    # and back: the scheduled call goes (0006 has no such status), the rest stays
    await downgrade(empty_db_url, "0006")
    assert await _count(empty_db_url, "SELECT count(*) FROM call_messages") == 1
    assert await _count(empty_db_url, "SELECT count(*) FROM calls") == 1
