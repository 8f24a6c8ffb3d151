"""Call records: the durable history of every call, and its Vapi JSON shape.

Reads are scoped by tenant: every read method takes `tenant_id` first and filters on it, where
`None` means the dev scope (calls made without a tenant, e.g. `ava serve` with an assistant file),
never "any tenant". Writes during a call are keyed by the call id: the id is random, minted by
this server for a call it owns (never derived from a CallSid or anything else a caller sends),
the API never hands a caller-supplied id to a write path, and `CallWrites.start_call` refuses a
row of another tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.cursors import encode_cursor, newest_first
from storage.tables import (
    CALL_STATUSES,
    CALL_TYPES,
    CallEventRow,
    CallMessageRow,
    CallRow,
    CallStatus,
    CallTurnRow,
    CallType,
    StreamTokenUsedRow,
    utcnow,
)
from storage.vapi import to_vapi
from storage.writes import CallWrites
from voice.events import TurnLatency

__all__ = [
    "ORPHANED_REASON",
    "CallEventRecord",
    "CallMessage",
    "CallPage",
    "CallRecord",
    "CallStatus",
    "CallStore",
    "CallTurn",
    "CallType",
    "CallWrites",
    "to_vapi",
]

# Not a voice.types.EndedReason: no session ends this way, the next process does it for them.
ORPHANED_REASON = "call.in-progress.error-server-restarted"

_MAX_LIMIT = 1000
_PROGRESS: tuple[CallStatus, ...] = ("queued", "ringing", "in-progress")


@dataclass(frozen=True, slots=True)
class CallMessage:
    seq: int
    role: str  # Vapi's: system | user | bot | tool_calls | tool_call_result
    message: str
    time: int  # epoch milliseconds
    seconds_from_start: float
    duration: float = 0.0  # seconds
    interrupted: bool = False
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class CallTurn:
    index: int
    at: float
    user_text: str
    assistant_text: str
    interrupted: bool
    latency: TurnLatency | None


@dataclass(frozen=True, slots=True)
class CallEventRecord:
    at: datetime
    kind: str
    data: dict[str, Any]
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    tenant_id: str | None
    type: str
    status: str
    created_at: datetime
    updated_at: datetime
    assistant_id: str | None = None
    phone_number_id: str | None = None
    ended_reason: str | None = None
    ended_detail: str | None = None
    twilio_call_sid: str | None = None
    stream_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    node_id: str | None = None
    costs: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Filled by get_call (and list_calls(details=True)); empty on plain listings.
    messages: tuple[CallMessage, ...] = ()
    turns: tuple[CallTurn, ...] = ()
    events: tuple[CallEventRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class CallPage:
    items: list[CallRecord]
    next_cursor: str | None  # pass back as `cursor` for the next (older) page


class CallStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[CallWrites]:
        """Several writes in one transaction, committed when the block exits without error."""
        async with self._sessions() as session, session.begin():
            yield CallWrites(session)

    # --- creating and reading (tenant-scoped) ---------------------------------------------------

    async def create_call(
        self,
        tenant_id: str | None,
        *,
        type: CallType,
        call_id: str | None = None,
        status: CallStatus = "queued",
        assistant_id: str | None = None,
        phone_number_id: str | None = None,
        twilio_call_sid: str | None = None,
        stream_sid: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        node_id: str | None = None,
        started_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CallRecord:
        if type not in CALL_TYPES or status not in CALL_STATUSES:
            raise ValueError(f"bad call type/status {type!r}/{status!r}")
        row = CallRow(
            id=call_id or str(uuid.uuid4()),
            tenant_id=tenant_id,
            type=type,
            status=status,
            assistant_id=assistant_id,
            phone_number_id=phone_number_id,
            twilio_call_sid=twilio_call_sid,
            stream_sid=stream_sid,
            from_number=from_number,
            to_number=to_number,
            node_id=node_id,
            started_at=started_at,
            costs=[],
            metadata_=dict(metadata or {}),
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return _record(row)

    async def get_call(
        self, tenant_id: str | None, call_id: str, *, details: bool = True
    ) -> CallRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(CallRow).where(_scope(tenant_id), CallRow.id == call_id)
            )
            if row is None:
                return None
            return (await _with_details(session, [row]))[0] if details else _record(row)

    async def find_by_twilio_sid(self, tenant_id: str | None, call_sid: str) -> CallRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(CallRow)
                .where(_scope(tenant_id), CallRow.twilio_call_sid == call_sid)
                .order_by(CallRow.created_at.desc())
                .limit(1)
            )
            return None if row is None else _record(row)

    async def list_calls(
        self,
        tenant_id: str | None,
        *,
        assistant_id: str | None = None,
        phone_number_id: str | None = None,
        status: CallStatus | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        details: bool = False,
    ) -> CallPage:
        """Newest first. `created_after`/`created_before` are exclusive bounds."""
        for bound in (created_after, created_before):
            if bound is not None and bound.tzinfo is None:
                raise ValueError("created_after/created_before must be timezone-aware")
        limit = max(1, min(limit, _MAX_LIMIT))
        query = select(CallRow).where(_scope(tenant_id))
        if assistant_id is not None:
            query = query.where(CallRow.assistant_id == assistant_id)
        if phone_number_id is not None:
            query = query.where(CallRow.phone_number_id == phone_number_id)
        if status is not None:
            query = query.where(CallRow.status == status)
        if created_after is not None:
            query = query.where(CallRow.created_at > created_after)
        if created_before is not None:
            query = query.where(CallRow.created_at < created_before)
        query = newest_first(query, CallRow.created_at, CallRow.id, cursor, limit)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
            more = len(rows) > limit
            rows = rows[:limit]
            items = await _with_details(session, rows) if details else [_record(r) for r in rows]
        next_cursor = _encode_cursor(rows[-1]) if more else None
        return CallPage(items, next_cursor)

    async def update_status(self, tenant_id: str | None, call_id: str, status: CallStatus) -> bool:
        """Move a call along queued → ringing → in-progress → forwarding; never un-ends one."""
        if status == "ended" or status not in CALL_STATUSES:
            raise ValueError(f"use finish_call to end a call, not status {status!r}")
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow)
                .where(_scope(tenant_id), CallRow.id == call_id, CallRow.status != "ended")
                .values(status=status)
            )
        return bool(getattr(result, "rowcount", 0))

    async def advance_status(self, tenant_id: str | None, call_id: str, status: CallStatus) -> bool:
        """Like update_status, but only forward (queued → ringing → in-progress): Twilio's status
        callbacks arrive out of order, and a late `ringing` must not undo `in-progress`."""
        if status not in _PROGRESS:
            raise ValueError(f"not a progress status: {status!r}")
        earlier = _PROGRESS[: _PROGRESS.index(status)]
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow)
                .where(_scope(tenant_id), CallRow.id == call_id, CallRow.status.in_(earlier))
                .values(status=status)
            )
        return bool(getattr(result, "rowcount", 0))

    async def set_twilio_sid(self, tenant_id: str | None, call_id: str, call_sid: str) -> bool:
        """Attach Twilio's CallSid to a call we placed (known once `calls.create` answers)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow)
                .where(_scope(tenant_id), CallRow.id == call_id)
                .values(twilio_call_sid=call_sid)
            )
        return bool(getattr(result, "rowcount", 0))

    async def delete_call(self, tenant_id: str | None, call_id: str) -> bool:
        """Delete an ended call and (by cascade) its messages, turns and events."""
        async with self._sessions() as session, session.begin():
            row = await session.scalar(
                select(CallRow).where(_scope(tenant_id), CallRow.id == call_id)
            )
            if row is None:
                return False
            # Explicit, not left to ON DELETE CASCADE: SQLite enforces it only per connection.
            for child in (CallMessageRow, CallTurnRow, CallEventRow):
                await session.execute(delete(child).where(child.call_id == call_id))
            await session.execute(delete(CallRow).where(CallRow.id == call_id))
        return True

    async def use_stream_token(self, token_id: str, expires_at: datetime) -> bool:
        """Mark a media-stream token used; False if it already was (a replay).

        In the database rather than in memory or Redis: every process serving calls shares it,
        whether or not Redis is configured, and the primary key makes the check-and-set atomic.
        Rows are kept only until their token expires (an expired token is refused anyway)."""
        now = utcnow()
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    delete(StreamTokenUsedRow).where(StreamTokenUsedRow.expires_at < now)
                )
                session.add(StreamTokenUsedRow(token_id=token_id, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    # --- the call loop's writes (one transaction each; the recorder batches via batch()) --------

    async def add_message(
        self,
        call_id: str,
        role: str,
        message: str,
        *,
        time: int,
        seconds_from_start: float,
        duration: float = 0.0,
        interrupted: bool = False,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
    ) -> int:
        async with self.batch() as w:
            return await w.add_message(
                call_id, role, message, time=time, seconds_from_start=seconds_from_start,
                duration=duration, interrupted=interrupted, tool_calls=tool_calls,
                tool_call_id=tool_call_id, name=name,
            )  # fmt: skip

    async def add_turn(
        self,
        call_id: str,
        *,
        index: int,
        at: float,
        user_text: str,
        assistant_text: str,
        interrupted: bool,
        latency: TurnLatency | None,
    ) -> None:
        async with self.batch() as w:
            await w.add_turn(
                call_id, index=index, at=at, user_text=user_text, assistant_text=assistant_text,
                interrupted=interrupted, latency=latency,
            )  # fmt: skip

    async def add_event(
        self,
        call_id: str,
        kind: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
        sequence: int | None = None,
    ) -> bool:
        async with self.batch() as w:
            return await w.add_event(call_id, kind, data, at=at, sequence=sequence)

    async def finish_call(
        self, call_id: str, reason: str, detail: str = "", ended_at: datetime | None = None
    ) -> bool:
        async with self.batch() as writes:
            return await writes.finish_call(call_id, reason, detail, ended_at)

    async def close_orphaned_calls(
        self,
        node_id: str | None,
        *,
        reason: str = ORPHANED_REASON,
        detail: str = "the process running this call stopped before the call ended",
    ) -> int:
        """End every unfinished call of `node_id` (None: of every node, for a single-node
        server starting up). Returns how many calls were closed."""
        query = update(CallRow).where(CallRow.status != "ended")
        if node_id is not None:
            query = query.where(CallRow.node_id == node_id)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                query.values(
                    status="ended", ended_reason=reason, ended_detail=detail, ended_at=utcnow()
                )
            )
        return int(getattr(result, "rowcount", 0))


def _scope(tenant_id: str | None) -> ColumnElement[bool]:
    return CallRow.tenant_id.is_(None) if tenant_id is None else CallRow.tenant_id == tenant_id


def _record(row: CallRow, **children: Any) -> CallRecord:
    return CallRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        type=row.type,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        assistant_id=row.assistant_id,
        phone_number_id=row.phone_number_id,
        ended_reason=row.ended_reason,
        ended_detail=row.ended_detail,
        twilio_call_sid=row.twilio_call_sid,
        stream_sid=row.stream_sid,
        from_number=row.from_number,
        to_number=row.to_number,
        started_at=row.started_at,
        ended_at=row.ended_at,
        node_id=row.node_id,
        costs=list(row.costs or []),
        metadata=dict(row.metadata_ or {}),
        **children,
    )


async def _with_details(session: AsyncSession, rows: Sequence[CallRow]) -> list[CallRecord]:
    """Records with messages, turns and events: three IN queries for the whole page."""
    ids = [row.id for row in rows]
    messages: dict[str, list[CallMessage]] = {i: [] for i in ids}
    turns: dict[str, list[CallTurn]] = {i: [] for i in ids}
    events: dict[str, list[CallEventRecord]] = {i: [] for i in ids}
    for m in await session.scalars(
        select(CallMessageRow)
        .where(CallMessageRow.call_id.in_(ids))
        .order_by(CallMessageRow.call_id, CallMessageRow.seq)
    ):
        messages[m.call_id].append(
            CallMessage(
                m.seq, m.role, m.message, m.time, m.seconds_from_start, m.duration,
                m.interrupted, m.tool_calls, m.tool_call_id, m.name,
            )
        )  # fmt: skip
    for t in await session.scalars(
        select(CallTurnRow).where(CallTurnRow.call_id.in_(ids)).order_by(CallTurnRow.index)
    ):
        latency = None
        if t.voice_to_voice is not None:
            latency = TurnLatency(
                t.voice_to_voice, t.endpointing or 0.0, t.stt or 0.0, t.llm_ttft or 0.0,
                t.tts_ttfb or 0.0, t.server or 0.0,
            )  # fmt: skip
        turns[t.call_id].append(
            CallTurn(t.index, t.at, t.user_text, t.assistant_text, t.interrupted, latency)
        )
    for e in await session.scalars(
        select(CallEventRow)
        .where(CallEventRow.call_id.in_(ids))
        .order_by(CallEventRow.at, CallEventRow.id)
    ):
        events[e.call_id].append(CallEventRecord(e.at, e.kind, dict(e.data), e.sequence))
    return [
        _record(
            row,
            messages=tuple(messages[row.id]),
            turns=tuple(turns[row.id]),
            events=tuple(events[row.id]),
        )
        for row in rows
    ]


def _encode_cursor(row: CallRow) -> str:
    return encode_cursor(row.created_at, row.id)
