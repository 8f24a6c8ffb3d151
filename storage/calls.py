"""Call records: the durable history of every call, and its Vapi JSON shape.

Reads are scoped by tenant: every read method takes `tenant_id` first and filters on it, where
`None` means the dev scope (calls made without a tenant, e.g. `ava serve` with an assistant file),
never "any tenant". Writes during a call are keyed by the call id: the id is random, minted by
this server for a call it owns (never derived from a CallSid or anything else a caller sends),
the API never hands a caller-supplied id to a write path, and `CallWrites.start_call` refuses a
row of another tenant.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
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
    "CallEventRecord",
    "CallMessage",
    "CallPage",
    "CallRecord",
    "CallStatus",
    "CallStore",
    "CallTurn",
    "CallType",
    "CallUsage",
    "CallWrites",
    "to_vapi",
]

_MAX_LIMIT = 1000
# The analysis' structured data, as text per top-level field, kept beside it for filtering: one
# comparison of text that SQLite and PostgreSQL make alike (their JSON operators differ on numbers
# and booleans). Not part of Vapi's shape: storage.vapi never shows it.
FILTER_TEXT = "_filterText"
FILTER_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_FILTER_FIELDS = 64
MAX_FILTER_CHARS = 256
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
    # The stored recording's description (storage.recordings); None: not recorded.
    recording: dict[str, Any] | None = None
    # Vapi's call.analysis as control.post_call stored it; None: not analysed (yet).
    analysis: dict[str, Any] | None = None
    # Filled by get_call (and list_calls(details=True)); empty on plain listings.
    messages: tuple[CallMessage, ...] = ()
    turns: tuple[CallTurn, ...] = ()
    events: tuple[CallEventRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class CallUsage:
    """What analytics aggregates of one call: its groups, its duration, its priced costs."""

    created_at: datetime
    type: str
    status: str
    assistant_id: str | None
    ended_reason: str | None
    started_at: datetime | None
    ended_at: datetime | None
    costs: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CallPage:
    items: list[CallRecord]
    next_cursor: str | None  # pass back as `cursor` for the next (older) page


# How often a process clears expired used-token rows. Not at every stream start: that made each
# start a second write in its transaction, and on SQLite, with 100 calls on one loaded core,
# stream starts failed with "database is locked" behind the recorders' writes.
TOKEN_SWEEP_SECONDS = 60.0


class CallStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._monotonic = monotonic
        self._tokens_swept_at: float | None = None

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
        scheduled_at: datetime | None = None,
    ) -> CallRecord:
        if type not in CALL_TYPES or status not in CALL_STATUSES:
            raise ValueError(f"bad call type/status {type!r}/{status!r}")
        if (status == "scheduled") != (scheduled_at is not None):
            raise ValueError("a scheduled call, and only one, has a scheduled_at")
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
            scheduled_at=scheduled_at,
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
        success_evaluation: str | None = None,
        structured_data: Mapping[str, str | None] | None = None,
    ) -> CallPage:
        """Newest first. `created_after`/`created_before` are exclusive bounds.
        `success_evaluation`: the analysis' successEvaluation is that string;
        `structured_data`: field → its value as text (a string as it is, a number or boolean as
        JSON writes it), or None for "present and not null"; top-level fields only."""
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
        query = query.where(*_analysis_filters(success_evaluation, structured_data))
        query = newest_first(query, CallRow.created_at, CallRow.id, cursor, limit)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
            more = len(rows) > limit
            rows = rows[:limit]
            items = await _with_details(session, rows) if details else [_record(r) for r in rows]
        next_cursor = _encode_cursor(rows[-1]) if more else None
        return CallPage(items, next_cursor)

    async def usage(
        self, tenant_id: str | None, *, start: datetime, end: datetime, limit: int
    ) -> list[CallUsage]:
        """The tenant's calls created in [start, end), oldest first, at most `limit + 1` (one
        more than asked: the caller learns the range holds more than it will aggregate)."""
        columns = (
            CallRow.created_at, CallRow.type, CallRow.status, CallRow.assistant_id,
            CallRow.ended_reason, CallRow.started_at, CallRow.ended_at, CallRow.costs,
        )  # fmt: skip
        query = (
            select(*columns)
            .where(_scope(tenant_id), CallRow.created_at >= start, CallRow.created_at < end)
            .order_by(CallRow.created_at, CallRow.id)
            .limit(limit + 1)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            CallUsage(
                r.created_at, r.type, r.status, r.assistant_id, r.ended_reason, r.started_at,
                r.ended_at, list(r.costs or []),
            )
            for r in rows
        ]  # fmt: skip

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

    async def add_metadata(
        self,
        tenant_id: str | None,
        call_id: str,
        metadata: dict[str, Any],
        *,
        create: dict[str, Any] | None = None,
    ) -> bool:
        """Merge `metadata` into the call's (what a call learns before its session starts: its
        effective assistant, its variables). A call without a row yet gets one made from
        `create` (`create_call`'s keyword arguments) when given. False, touching nothing, for
        a call of another tenant, or one that does not exist and `create` is None."""
        async with self._sessions() as session, session.begin():
            row = await session.get(CallRow, call_id)
            if row is None:
                if create is None:
                    return False
                fields = dict(create)
                type_ = fields.pop("type")
                status = fields.pop("status", "ringing")
                if type_ not in CALL_TYPES or status not in CALL_STATUSES:
                    raise ValueError(f"bad call type/status {type_!r}/{status!r}")
                session.add(
                    CallRow(
                        id=call_id,
                        tenant_id=tenant_id,
                        type=type_,
                        status=status,
                        costs=[],
                        metadata_=dict(metadata),
                        **fields,
                    )
                )
                return True
            if row.tenant_id != tenant_id:
                return False
            row.metadata_ = {**(row.metadata_ or {}), **metadata}
        return True

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
        Rows are kept until their token expires (an expired token is refused anyway), and are
        cleared at most every `TOKEN_SWEEP_SECONDS` by each process."""
        clock = self._monotonic()
        last = self._tokens_swept_at
        sweep = last is None or clock - last >= TOKEN_SWEEP_SECONDS
        try:
            async with self._sessions() as session, session.begin():
                if sweep:
                    await session.execute(
                        delete(StreamTokenUsedRow).where(StreamTokenUsedRow.expires_at < utcnow())
                    )
                session.add(StreamTokenUsedRow(token_id=token_id, expires_at=expires_at))
        except IntegrityError:
            return False
        if sweep:
            self._tokens_swept_at = clock
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

    async def set_analysis(self, call_id: str, analysis: Mapping[str, Any]) -> bool:
        """Store the call's analysis (Vapi's `call.analysis`, control.post_call's result), with
        the text of its structured data's top-level scalars for `list_calls` to filter on."""
        stored = {**analysis, FILTER_TEXT: _filter_text(analysis.get("structuredData"))}
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow).where(CallRow.id == call_id).values(analysis=stored)
            )
        return bool(getattr(result, "rowcount", 0))

    async def finish_call(
        self, call_id: str, reason: str, detail: str = "", ended_at: datetime | None = None
    ) -> bool:
        async with self.batch() as writes:
            return await writes.finish_call(call_id, reason, detail, ended_at)

    # --- scheduled calls (every tenant's: the scheduler's) -------------------------------------

    async def due_calls(self, now: datetime, limit: int) -> list[CallRecord]:
        """Scheduled calls whose time has come, the longest-waiting first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(CallRow)
                .where(CallRow.status == "scheduled", CallRow.scheduled_at <= now)
                .order_by(CallRow.scheduled_at, CallRow.id)
                .limit(limit)
            )
            return [_record(row) for row in rows]

    async def claim_scheduled(self, call_id: str, node_id: str | None) -> bool:
        """Take a due call for placing: True for exactly one caller, however many nodes ask at
        once (the status moves from scheduled to queued in one conditional UPDATE)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(CallRow)
                .where(CallRow.id == call_id, CallRow.status == "scheduled")
                .values(status="queued", node_id=node_id)
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))


def _filter_text(data: Any) -> dict[str, str]:
    if not isinstance(data, Mapping):
        return {}
    out: dict[str, str] = {}
    for name, value in list(data.items())[:MAX_FILTER_FIELDS]:
        if isinstance(value, bool | int | float):
            text = json.dumps(value)
        elif isinstance(value, str):
            text = value
        else:
            continue  # objects, lists, null: present or not, never equal to a query's text
        if len(text) <= MAX_FILTER_CHARS and FILTER_FIELD.fullmatch(str(name)):
            out[str(name)] = text
    return out


def _analysis_filters(
    success_evaluation: str | None, structured_data: Mapping[str, str | None] | None
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if success_evaluation is not None:
        clauses.append(CallRow.analysis["successEvaluation"].as_string() == success_evaluation)
    for name, value in (structured_data or {}).items():
        if not FILTER_FIELD.fullmatch(name):
            raise ValueError(f"not a field name: {name[:80]!r}")
        if value is None:
            present = CallRow.analysis[("structuredData", name)].as_string()
            clauses.append(present.is_not(None))
        else:
            clauses.append(CallRow.analysis[(FILTER_TEXT, name)].as_string() == value)
    return clauses


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
        recording=dict(row.recording) if isinstance(row.recording, dict) else None,
        analysis=dict(row.analysis) if isinstance(row.analysis, dict) else None,
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
            # A stage added later (`held`, 0009) is NULL on older turns; it reads as 0, as no
            # hold was stored apart then.
            stages = {s.name: getattr(t, s.name) or 0.0 for s in fields(TurnLatency)}
            latency = TurnLatency(**stages)
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
