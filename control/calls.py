"""Live calls of this process and the record each call leaves.

The record is built from the session's events (the `EventSink`), so whatever ends a call, the
record says why. Records live in memory here (the most recent `max_records`); the database
recorder subscribes to the same events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from control.logs import bound
from voice.events import (
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    ToolCallFailed,
    TurnCompleted,
)
from voice.session import CallSession
from voice.types import EndedReason

__all__ = ["CallManager", "CallRecord", "Refusal"]

log = logging.getLogger("ava.calls")


@dataclass(slots=True)
class CallRecord:
    id: str
    transport: str = ""
    assistant: str = ""
    status: str = "in-progress"
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    ended_reason: str | None = None
    ended_detail: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    barge_ins: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Refusal(StrEnum):
    """Why this node takes no new call now (the label of ava_calls_refused_total)."""

    DRAINING = "draining"
    MAX_CALLS = "max_calls"
    SATURATED = "saturated"


class CallManager:
    """Tracks live sessions (for limits and drain) and keeps their records."""

    def __init__(
        self,
        max_calls: int,
        max_records: int = 1000,
        saturated: Callable[[], bool] = lambda: False,
    ) -> None:
        self.max_calls = max_calls
        # Whether the event loop is past what it can carry (control/loop_lag.py).
        self.saturated = saturated
        self.live: dict[str, CallSession] = {}
        self.records: OrderedDict[str, CallRecord] = OrderedDict()
        self._max_records = max_records
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def record(self, call_id: str) -> CallRecord:
        record = self.records.get(call_id)
        if record is None:
            record = self.records[call_id] = CallRecord(call_id)
            while len(self.records) > self._max_records:
                self.records.popitem(last=False)
        return record

    def find(self, key: str) -> CallRecord | None:
        """By AVA call id or by Twilio CallSid."""
        record = self.records.get(key)
        if record is not None:
            return record
        for record in reversed(self.records.values()):
            if record.metadata.get("call_sid") == key:
                return record
        return None

    def reject(self, call_id: str, reason: EndedReason, detail: str, **metadata: str) -> None:
        """A stream that never became a call (bad token, malformed start) still leaves a record."""
        record = self.record(call_id)
        record.status, record.ended_at = "ended", time.time()
        record.ended_reason, record.ended_detail = reason.value, detail
        record.metadata.update(metadata)

    def emit(self, event: CallEvent) -> None:
        record = self.record(event.call_id)
        if isinstance(event, CallStarted):
            record.transport, record.assistant = event.transport, event.assistant
            record.started_at = event.wall
            record.metadata.update(event.metadata)
        elif isinstance(event, MessageAdded):
            record.messages.append(
                {
                    "role": event.role,
                    "message": event.content,
                    "secondsFromStart": round(event.at, 3),
                    "duration": round(event.duration, 3),
                    "interrupted": event.interrupted,
                    **_tool_fields(event),
                }
            )
        elif isinstance(event, TurnCompleted):
            turn: dict[str, Any] = {
                "index": event.index,
                "user": event.user_text,
                "assistant": event.assistant_text,
                "interrupted": event.interrupted,
            }
            if event.latency is not None:
                turn["latency"] = {k: round(v, 4) for k, v in asdict(event.latency).items()}
            record.turns.append(turn)
        elif isinstance(event, BargeIn):
            record.barge_ins.append(
                {
                    "at": round(event.at, 3),
                    "onset": round(event.onset, 3),
                    "heard": event.heard_text,
                }
            )
        elif isinstance(event, ToolCallFailed):
            record.errors.append({"stage": "tool", **asdict(event)})
        elif isinstance(event, ProviderFailed):
            record.errors.append(asdict(event))
        elif isinstance(event, CallEnded):
            record.status, record.ended_at = "ended", time.time()
            record.ended_reason, record.ended_detail = event.reason.value, event.detail

    def refusal(self) -> Refusal | None:
        """Why a new call would be refused here now; None when it is welcome. The one admission
        decision: the Twilio voice webhook, a WebRTC offer and /readyz all ask it. Live calls are
        never ended for it."""
        if self.draining:
            return Refusal.DRAINING
        if len(self.live) >= self.max_calls:
            return Refusal.MAX_CALLS
        if self.saturated():
            return Refusal.SATURATED
        return None

    async def run(self, session: CallSession) -> CallEnded:
        # Only the hard limits here, not load: a stream reaching `run` was admitted already (its
        # webhook answered, maybe by another node), and its caller is not cut off for load.
        if self.draining or len(self.live) >= self.max_calls:
            session.hang_up(
                EndedReason.SERVER_SHUTDOWN if self.draining else EndedReason.SERVER_ERROR,
                "server draining" if self.draining else "too many concurrent calls",
            )
        self.live[session.call_id] = session
        self._idle.clear()
        try:
            # Every line the call logs, in any of its tasks, carries its id (control/logs.py).
            with bound(call_id=session.call_id, tenant_id=session.metadata.get("tenant_id")):
                return await session.run()
        finally:
            self.live.pop(session.call_id, None)
            if not self.live:
                self._idle.set()

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new calls; give live ones `grace_seconds` to end, then hang them up."""
        self.draining = True
        if await self._wait_idle(grace_seconds):
            return
        log.warning("hanging up %d calls still live after the drain wait", len(self.live))
        for session in list(self.live.values()):
            session.hang_up(EndedReason.SERVER_SHUTDOWN, "server shutting down")
        if not await self._wait_idle(5.0):
            log.error("%d calls did not end after hang-up", len(self.live))

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def _tool_fields(event: MessageAdded) -> dict[str, Any]:
    """Vapi's extra fields on `tool_calls` / `tool_call_result` messages."""
    if event.role == "tool_calls":
        return {"toolCalls": list(event.tool_calls)}
    if event.role == "tool_call_result":
        return {"toolCallId": event.tool_call_id, "name": event.name, "result": event.content}
    return {}
