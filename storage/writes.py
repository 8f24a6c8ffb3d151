"""The call loop's writes to a call record, inside one transaction.

`CallStore.batch()` hands out a `CallWrites`; the recorder uses one per batch of events, the
control plane one per Twilio status callback. Writes are keyed by call id: the id is random,
minted by this server for a call it owns and never derived from what a caller sends, and
`start_call` refuses a row of another tenant (see storage.calls for the tenant-scoped reads).
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import CallEventRow, CallMessageRow, CallRow, CallTurnRow, CallType, utcnow
from voice.events import TurnLatency

__all__ = ["CallWrites"]

# OpenAI/legacy roles → Vapi's message roles.
_ROLES = {"assistant": "bot", "tool": "tool_call_result", "function_call": "tool_calls"}


class CallWrites:
    """Writes inside one transaction (`CallStore.batch()`); committed when the block exits."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def start_call(
        self,
        call_id: str,
        *,
        started_at: datetime,
        type: CallType | None = None,
        tenant_id: str | None = None,
        node_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        assistant_id: str | None = None,
        phone_number_id: str | None = None,
        twilio_call_sid: str | None = None,
        stream_sid: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
    ) -> bool:
        """The call is live: create its row, or move an existing (queued/ringing) row to
        in-progress, filling the ids and numbers it does not have yet.

        False, touching nothing, when the row with that id is another tenant's: a call is
        only ever continued by its own tenant, and no write changes a row's tenant."""
        columns = {
            "assistant_id": assistant_id,
            "phone_number_id": phone_number_id,
            "twilio_call_sid": twilio_call_sid,
            "stream_sid": stream_sid,
            "from_number": from_number,
            "to_number": to_number,
        }
        row = await self._session.get(CallRow, call_id)
        if row is None:
            self._session.add(
                CallRow(
                    id=call_id,
                    tenant_id=tenant_id,
                    type=type or "webCall",
                    status="in-progress",
                    started_at=started_at,
                    node_id=node_id,
                    costs=[],
                    metadata_=dict(metadata or {}),
                    **columns,
                )
            )
            return True
        if row.tenant_id != tenant_id:
            return False
        if row.status != "ended":
            row.status = "in-progress"
        row.started_at = started_at
        row.node_id = node_id or row.node_id
        for name, value in columns.items():
            if value and not getattr(row, name):
                setattr(row, name, value)
        if metadata:
            row.metadata_ = {**row.metadata_, **metadata}
        return True

    async def ensure_call(self, call_id: str, *, started_at: datetime) -> datetime:
        """The call's start time, creating a placeholder row for a call never seen starting
        (its CallStarted was dropped or written by a process that died)."""
        started = await self._session.scalar(
            select(func.coalesce(CallRow.started_at, CallRow.created_at)).where(
                CallRow.id == call_id
            )
        )
        if started is not None:
            return started
        self._session.add(
            CallRow(
                id=call_id,
                type="webCall",
                status="in-progress",
                started_at=started_at,
                costs=[],
                metadata_={"recordIncomplete": True},
            )
        )
        await self._session.flush()
        return started_at

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
        """Append a message (OpenAI roles are mapped to Vapi's); returns its sequence number."""
        role = _ROLES.get(role, role)
        if role == "bot" and tool_calls and not message:
            role = "tool_calls"
        last = await self._session.scalar(
            select(func.max(CallMessageRow.seq)).where(CallMessageRow.call_id == call_id)
        )
        seq = 0 if last is None else last + 1
        self._session.add(
            CallMessageRow(
                call_id=call_id,
                seq=seq,
                role=role,
                message=message,
                time=time,
                seconds_from_start=seconds_from_start,
                duration=duration,
                interrupted=interrupted,
                tool_calls=tool_calls,
                tool_call_id=tool_call_id,
                name=name,
            )
        )
        await self._session.flush()  # the next add_message of this batch must see this seq
        return seq

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
        """Record a finished turn; writing the same index again replaces it (safe to retry)."""
        row = await self._session.get(CallTurnRow, (call_id, index))
        if row is None:
            row = CallTurnRow(call_id=call_id, index=index)
            self._session.add(row)
        row.at, row.user_text, row.assistant_text = at, user_text, assistant_text
        row.interrupted = interrupted
        for stage in fields(TurnLatency):  # CallTurnRow has a column per stage
            setattr(row, stage.name, None if latency is None else getattr(latency, stage.name))

    async def add_event(
        self,
        call_id: str,
        kind: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
        sequence: int | None = None,
    ) -> bool:
        """Record an event; False when (kind, sequence) was already recorded (a retried
        Twilio status callback)."""
        if sequence is not None:
            seen = await self._session.scalar(
                select(CallEventRow.id).where(
                    CallEventRow.call_id == call_id,
                    CallEventRow.kind == kind,
                    CallEventRow.sequence == sequence,
                )
            )
            if seen is not None:
                return False
        self._session.add(
            CallEventRow(
                call_id=call_id, at=at or utcnow(), kind=kind, sequence=sequence, data=data
            )
        )
        return True

    async def set_costs(self, call_id: str, costs: list[dict[str, Any]]) -> None:
        """The call's priced `costs[]` (voice.pricing), whichever end was recorded first."""
        await self._session.execute(
            update(CallRow).where(CallRow.id == call_id).values(costs=list(costs))
        )

    async def finish_call(
        self, call_id: str, reason: str, detail: str = "", ended_at: datetime | None = None
    ) -> bool:
        """End the call. The first end wins: a later one (e.g. Twilio's `completed` callback
        after the session already ended it) does not overwrite the reason."""
        result = await self._session.execute(
            update(CallRow)
            .where(CallRow.id == call_id, CallRow.status != "ended")
            .values(
                status="ended",
                ended_reason=reason,
                ended_detail=detail or None,
                ended_at=ended_at or utcnow(),
            )
        )
        return bool(getattr(result, "rowcount", 0))
