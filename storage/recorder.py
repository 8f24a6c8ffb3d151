"""`CallRecorder`: the database `EventSink`, off the call loop's hot path.

The call loop calls `emit()`, which only enqueues. One writer task (`run()`, started by the app
in its lifespan TaskGroup) drains the queue and writes in batches: whatever accumulated while the
previous write was in flight goes into the next transaction, so there is no batching timer and a
lone event is written at once. A finished turn ends its transaction: the turn is committed before
the writer looks at the next event, so every turn of a call is durable before the next one can be.

Overflow policy: the queue holds `maxsize` events; when full, new events are dropped and counted
in `dropped` (logged once per call). A database error is logged, and the events are retried one
at a time; an event that fails again is dropped and counted. The call never sees either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import cast

from storage.calls import CallStore
from storage.tables import CALL_TYPES, CallType
from storage.writes import CallWrites
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

__all__ = ["CallRecorder"]

log = logging.getLogger("ava.storage.recorder")

_RECORDED = (
    CallStarted, MessageAdded, TurnCompleted, BargeIn, ProviderFailed, ToolCallFailed, CallEnded,
)  # fmt: skip
_MAX_TRACKED_CALLS = 10_000  # bound on per-call memory if CallEnded events go missing


class CallRecorder:
    """Records call events into `calls` (see the module docstring for the guarantees)."""

    def __init__(
        self,
        calls: CallStore,
        *,
        node_id: str | None = None,
        maxsize: int = 10_000,
        max_batch: int = 500,
        retry_delay: float = 0.05,
    ) -> None:
        self.dropped = 0  # events lost to overflow or to a failed retry
        self._calls = calls
        self._node_id = node_id
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue(maxsize)
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._starts: OrderedDict[str, datetime] = OrderedDict()  # call id → wall-clock start
        self._overflow_logged: set[str] = set()
        # Calls whose start was refused (the id is another tenant's call): their events are not
        # written anywhere, least of all into that call.
        self._refused: set[str] = set()
        self._enqueued = 0
        self._processed = 0
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._running = False
        self._stopped = False  # run() has returned: nothing will drain the queue any more

    # --- the call loop's side ------------------------------------------------------------------

    def emit(self, event: CallEvent) -> None:
        """Queue `event` for writing. Never blocks, never raises."""
        if not isinstance(event, _RECORDED):
            return  # interim transcripts, VAD edges: metrics material, not the record
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if event.call_id not in self._overflow_logged:
                if len(self._overflow_logged) >= _MAX_TRACKED_CALLS:
                    self._overflow_logged.clear()
                self._overflow_logged.add(event.call_id)
                log.error(
                    "call recorder queue full (%d events): dropping events of call %s",
                    self._queue.maxsize,
                    event.call_id,
                )
            return
        self._enqueued += 1

    # --- the writer ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write queued events until cancelled. Call `flush()` first to lose nothing."""
        if self._running or self._stopped:
            raise RuntimeError("CallRecorder.run() is already running or has run")
        self._running = True
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                for segment in _segments(batch):
                    await self._write_segment(segment)
                    self._processed += len(segment)
                    self._wake_flushes()
        finally:
            self._running, self._stopped = False, True
            for _, waiter in self._flushes:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the call recorder stopped"))
            self._flushes.clear()

    async def flush(self) -> None:
        """Wait until every event emitted before this call has been written (or dropped).

        Waits for `run()` to start if it has not yet; raises RuntimeError if it has stopped."""
        target = self._enqueued
        if self._processed >= target:
            return
        if self._stopped:
            raise RuntimeError("the call recorder stopped: nothing will write queued events")
        waiter = asyncio.get_running_loop().create_future()
        self._flushes.append((target, waiter))
        await waiter

    def _wake_flushes(self) -> None:
        pending = []
        for target, waiter in self._flushes:
            if target <= self._processed:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                pending.append((target, waiter))
        self._flushes = pending

    async def _write_segment(self, events: list[CallEvent]) -> None:
        # Broad excepts: whatever a database or driver raises, the writer must keep going, or
        # the app's TaskGroup (and every live call with it) would go down with it.
        try:
            await self._write(events)
            return
        except Exception:
            log.error(
                "writing %d call events failed; retrying each once", len(events), exc_info=True
            )
        await asyncio.sleep(self._retry_delay)
        for event in events:
            try:
                await self._write([event])
            except Exception:
                self.dropped += 1
                log.error(
                    "%s of call %s dropped: writing it failed twice",
                    type(event).__name__,
                    event.call_id,
                    exc_info=True,
                )

    async def _write(self, events: list[CallEvent]) -> None:
        starts: dict[str, datetime] = {}  # learned in this transaction; kept only if it commits
        async with self._calls.batch() as writes:
            for event in events:
                await self._apply(writes, event, starts)
        self._starts.update(starts)
        while len(self._starts) > _MAX_TRACKED_CALLS:
            self._starts.popitem(last=False)
        for event in events:
            if isinstance(event, CallEnded):
                self._starts.pop(event.call_id, None)

    async def _start(
        self, w: CallWrites, event: CallEvent, starts: dict[str, datetime]
    ) -> datetime:
        """When the call began (wall clock); creates the call row for a never-seen call."""
        start = starts.get(event.call_id) or self._starts.get(event.call_id)
        if start is None:
            guess = datetime.now(UTC) - timedelta(seconds=event.at)
            start = starts[event.call_id] = await w.ensure_call(event.call_id, started_at=guess)
        return start

    async def _apply(self, w: CallWrites, event: CallEvent, starts: dict[str, datetime]) -> None:
        call_id = event.call_id
        if call_id in self._refused:
            return
        if isinstance(event, CallStarted):
            start = datetime.fromtimestamp(event.wall - event.at, UTC)
            meta = event.metadata  # what the media layer knew: ids, numbers ("" = unknown)
            started = await w.start_call(
                call_id,
                started_at=start,
                type=_call_type(event),
                tenant_id=meta.get("tenant_id") or None,
                node_id=self._node_id,
                metadata={**meta, "transport": event.transport, "assistantName": event.assistant},
                assistant_id=meta.get("assistant_id") or None,
                phone_number_id=meta.get("phone_number_id") or None,
                twilio_call_sid=meta.get("call_sid") or None,
                stream_sid=meta.get("stream_sid") or None,
                from_number=meta.get("from") or None,
                to_number=meta.get("to") or None,
            )
            if not started:
                log.error("call %s: its id is another tenant's call; not recorded", call_id)
                if len(self._refused) >= _MAX_TRACKED_CALLS:
                    self._refused.clear()
                self._refused.add(call_id)
                return
            starts[call_id] = start
            return
        start = await self._start(w, event, starts)
        at = start + timedelta(seconds=event.at)
        if isinstance(event, MessageAdded):
            await w.add_message(
                call_id,
                event.role,
                event.content,
                time=round(at.timestamp() * 1000),
                seconds_from_start=event.at,
                duration=event.duration,
                interrupted=event.interrupted,
                tool_calls=list(event.tool_calls) or None,
                tool_call_id=event.tool_call_id,
                name=event.name,
            )
        elif isinstance(event, TurnCompleted):
            await w.add_turn(
                call_id,
                index=event.index,
                at=event.at,
                user_text=event.user_text,
                assistant_text=event.assistant_text,
                interrupted=event.interrupted,
                latency=event.latency,
            )
        elif isinstance(event, BargeIn):
            data = {"secondsFromStart": event.at, "onset": event.onset, "heard": event.heard_text}
            await w.add_event(call_id, "barge-in", data, at=at)
        elif isinstance(event, ProviderFailed):
            data = {
                "secondsFromStart": event.at,
                "stage": event.stage,
                "provider": event.provider,
                "error": event.error,
                "retryable": event.retryable,
                "recovered": event.recovered,
            }
            await w.add_event(call_id, "provider-failed", data, at=at)
        elif isinstance(event, ToolCallFailed):
            data = {
                "secondsFromStart": event.at,
                "toolCallId": event.tool_call_id,
                "name": event.name,
                "error": event.error,
            }
            await w.add_event(call_id, "tool-call-failed", data, at=at)
        elif isinstance(event, CallEnded):
            # The priced costs (control/call_costs.py) go to calls.costs, not into the summary.
            summary = {
                k: v for k, v in event.summary.items() if k not in ("costs", "costBreakdown")
            }
            if summary:
                await w.add_event(call_id, "summary", summary, at=at)
            await w.finish_call(call_id, event.reason.value, event.detail, ended_at=at)
            costs = event.summary.get("costs")
            if isinstance(costs, list) and costs:
                await w.set_costs(call_id, costs)


def _segments(batch: list[CallEvent]) -> list[list[CallEvent]]:
    """Split a batch into transactions, each ending at a finished turn or an ended call."""
    segments: list[list[CallEvent]] = [[]]
    for event in batch:
        segments[-1].append(event)
        if isinstance(event, TurnCompleted | CallEnded):
            segments.append([])
    return [s for s in segments if s]


def _call_type(event: CallStarted) -> CallType:
    declared = event.metadata.get("type", "")
    if declared in CALL_TYPES:
        return cast(CallType, declared)
    if event.transport != "twilio":
        return "webCall"
    outbound = event.metadata.get("direction", "").startswith("outbound")
    return "outboundPhoneCall" if outbound else "inboundPhoneCall"
