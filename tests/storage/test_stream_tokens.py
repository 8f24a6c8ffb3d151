"""Single-use media-stream tokens: a replay is refused, and expired rows are cleared now and then
rather than at every stream start."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.calls import TOKEN_SWEEP_SECONDS, CallStore
from storage.tables import StreamTokenUsedRow, utcnow


async def used_ids(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return set((await session.scalars(select(StreamTokenUsedRow.token_id))).all())


async def test_a_token_is_used_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    calls = CallStore(sessions)
    expires = utcnow() + timedelta(minutes=5)
    assert await calls.use_stream_token("tok-1", expires)
    assert not await calls.use_stream_token("tok-1", expires)  # the replay
    assert await calls.use_stream_token("tok-2", expires)
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(StreamTokenUsedRow))
    assert count == 2


async def test_expired_rows_are_cleared_at_most_once_a_sweep_interval(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = [1000.0]
    calls = CallStore(sessions, monotonic=lambda: clock[0])
    past, future = utcnow() - timedelta(seconds=1), utcnow() + timedelta(minutes=5)

    assert await calls.use_stream_token("old-1", past)  # the first start sweeps (nothing yet)
    assert await calls.use_stream_token("new-1", future)
    assert await used_ids(sessions) == {"old-1", "new-1"}  # within the interval: no sweep

    clock[0] += TOKEN_SWEEP_SECONDS
    assert await calls.use_stream_token("new-2", future)
    assert await used_ids(sessions) == {"new-1", "new-2"}  # swept: only the expired row went

    # A replay refused while a sweep is due rolls the sweep back; the next start sweeps.
    assert await calls.use_stream_token("old-2", past)
    clock[0] += TOKEN_SWEEP_SECONDS
    assert not await calls.use_stream_token("new-2", future)
    assert "old-2" in await used_ids(sessions)
    assert await calls.use_stream_token("new-3", future)
    assert await used_ids(sessions) == {"new-1", "new-2", "new-3"}
