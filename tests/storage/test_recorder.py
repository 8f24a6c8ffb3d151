"""CallRecorder: events in, Vapi call records out, durably, without ever troubling the call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.calls import CallStore, to_vapi
from storage.orphans import OrphanStore
from storage.recorder import CallRecorder
from storage.tenants import TenantStore
from storage.writes import CallWrites
from voice.events import (
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    TranscriptReceived,
    TurnCompleted,
    TurnLatency,
)
from voice.ports import EventSink
from voice.types import EndedReason

LATENCY = TurnLatency(
    voice_to_voice=0.7, endpointing=0.25, stt=0.1, llm_ttft=0.2, tts_ttfb=0.15, server=0.02,
    held=0.0,
)  # fmt: skip
HELD = TurnLatency(  # the reply after a barge-in waited out stopSpeakingPlan.backoffSeconds
    voice_to_voice=1.7, endpointing=0.25, stt=0.1, llm_ttft=0.2, tts_ttfb=0.15, server=0.02,
    held=1.0,
)  # fmt: skip


def a_call(call_id: str, **metadata: str) -> list[CallEvent]:
    """The events of a short phone call, as a CallSession emits them."""
    return [
        CallStarted(call_id, 0.0, time.time(), "twilio", "Front desk", metadata),
        MessageAdded(call_id, 0.1, "bot", "Hello, how can I help?", duration=1.5),
        TranscriptReceived(call_id, 2.0, "I'd like", is_final=False),
        MessageAdded(call_id, 2.5, "user", "I'd like a table", duration=1.1),
        MessageAdded(call_id, 3.3, "bot", "For how many?", duration=0.9),
        TurnCompleted(call_id, 3.3, 0, "I'd like a table", "For how many?", False, LATENCY),
        MessageAdded(call_id, 5.0, "user", "Four", duration=0.4),
        ProviderFailed(call_id, 5.2, "llm", "openai", "HTTP 503", retryable=True),
        MessageAdded(call_id, 5.9, "bot", "Great, four", duration=0.5, interrupted=True),
        BargeIn(call_id, 6.4, onset=6.2, heard_text="Great, four"),
        TurnCompleted(call_id, 5.9, 1, "Four", "Great, four", True, HELD),
        CallEnded(call_id, 8.0, EndedReason.CUSTOMER_ENDED_CALL, "caller hung up"),
    ]


@asynccontextmanager
async def running(recorder: CallRecorder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(recorder.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_call_is_recorded_as_vapi_json(calls: CallStore, tenants: TenantStore) -> None:
    tenant = await tenants.create_tenant("Acme")
    recorder = CallRecorder(calls, node_id="node-1")
    sink: EventSink = recorder  # the recorder is an EventSink
    async with running(recorder):
        for event in a_call(
            "call_1", call_sid="CA1", stream_sid="MZ1", tenant_id=tenant.id,
            **{"from": "+15550001", "to": "+15550002"},
        ):  # fmt: skip
            sink.emit(event)
        await recorder.flush()

    assert recorder.dropped == 0
    call = await calls.get_call(tenant.id, "call_1")
    assert call is not None
    assert (call.twilio_call_sid, call.stream_sid, call.node_id) == ("CA1", "MZ1", "node-1")
    vapi = to_vapi(call)
    assert vapi["orgId"] == tenant.id and vapi["type"] == "inboundPhoneCall"
    assert vapi["status"] == "ended" and vapi["endedReason"] == "customer-ended-call"
    assert vapi["customer"] == {"number": "+15550001"}
    assert vapi["artifact"]["transcript"] == (
        "AI: Hello, how can I help?\nUser: I'd like a table\nAI: For how many?\nUser: Four\n"
        "AI: Great, four"
    )
    messages = vapi["messages"]
    assert [m["secondsFromStart"] for m in messages] == [0.1, 2.5, 3.3, 5.0, 5.9]
    assert messages[1]["duration"] == 1100 and messages[4]["interrupted"] is True
    assert messages[1]["time"] - messages[0]["time"] == 2400  # epoch ms from the call's start
    metrics = vapi["artifact"]["performanceMetrics"]
    assert [t["turnLatency"] for t in metrics["turnLatencies"]] == [700, 1700]
    assert [t["heldLatency"] for t in metrics["turnLatencies"]] == [0, 1000]
    assert metrics["heldLatencyAverage"] == 500
    assert [t.latency for t in call.turns] == [LATENCY, HELD]
    assert metrics["numUserInterrupted"] == 1
    assert [e.kind for e in call.events] == ["provider-failed", "barge-in"]
    assert call.events[0].data["provider"] == "openai"
    assert vapi["startedAt"] <= vapi["endedAt"]
    assert await calls.get_call(None, "call_1") is None  # recorded in its tenant's scope


async def test_events_of_a_call_never_seen_starting_still_land(calls: CallStore) -> None:
    recorder = CallRecorder(calls)
    async with running(recorder):
        for event in a_call("call_2")[1:6]:  # CallStarted lost
            recorder.emit(event)
        await recorder.flush()
    call = await calls.get_call(None, "call_2")
    assert call is not None and call.status == "in-progress"
    assert call.metadata == {"recordIncomplete": True}
    assert [m.message for m in call.messages] == [
        "Hello, how can I help?", "I'd like a table", "For how many?",
    ]  # fmt: skip
    assert len(call.turns) == 1


class SpyStore(CallStore):
    """Checks, whenever the recorder writes anything, what another connection can see."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        self.reader = CallStore(sessions)
        self.log: list[str] = []

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[CallWrites]:
        async with super().batch() as writes:
            yield _SpyWrites(writes, self)
        self.log.append("commit")


class _SpyWrites(CallWrites):
    def __init__(self, inner: CallWrites, spy: SpyStore) -> None:
        self._inner, self._spy = inner, spy

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name not in dir(CallWrites):
            return object.__getattribute__(self, name)
        method: Callable[..., Awaitable[Any]] = getattr(self._inner, name)
        spy = self._spy

        async def logged(call_id: str, *args: Any, **kwargs: Any) -> Any:
            committed = await spy.reader.get_call(None, call_id)
            turns = 0 if committed is None else len(committed.turns)
            spy.log.append(f"{name} (committed turns: {turns})")
            return await method(call_id, *args, **kwargs)

        return logged


async def test_each_finished_turn_is_committed_before_the_next_event(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    spy = SpyStore(sessions)
    recorder = CallRecorder(spy)
    for event in a_call("call_3"):  # all queued before the writer starts: one drain
        recorder.emit(event)
    async with running(recorder):
        await recorder.flush()
    assert spy.log == [
        "start_call (committed turns: 0)",
        "add_message (committed turns: 0)",
        "add_message (committed turns: 0)",
        "add_message (committed turns: 0)",
        "add_turn (committed turns: 0)",
        "commit",
        "add_message (committed turns: 1)",  # turn 0 is durable before anything else happens
        "add_event (committed turns: 1)",
        "add_message (committed turns: 1)",
        "add_event (committed turns: 1)",
        "add_turn (committed turns: 1)",
        "commit",
        "finish_call (committed turns: 2)",
        "commit",
    ]


async def test_overflow_drops_are_counted_and_logged_once_per_call(
    calls: CallStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = CallRecorder(calls, maxsize=3)
    events = a_call("call_4")
    with caplog.at_level(logging.ERROR, logger="ava.storage.recorder"):
        for event in events:
            recorder.emit(event)  # nothing drains: the writer isn't running
    recorded = [e for e in events if not isinstance(e, TranscriptReceived)]
    assert recorder.dropped == len(recorded) - 3
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1

    async with running(recorder):
        await recorder.flush()
    call = await calls.get_call(None, "call_4")
    assert call is not None and len(call.messages) == 2  # CallStarted + the first two messages


class FlakyStore(CallStore):
    """Fails the next `failures` transactions, like a database that went away for a moment."""

    failures = 0

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[CallWrites]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        async with super().batch() as writes:
            yield writes


async def test_database_errors_are_retried_once_then_dropped(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(sessions)
    recorder = CallRecorder(store, retry_delay=0)
    caplog.set_level(logging.CRITICAL, logger="ava.storage.recorder")
    async with running(recorder) as task:
        store.failures = 1  # the batch fails, every event's single retry succeeds
        for event in a_call("call_5")[:2]:
            recorder.emit(event)
        await recorder.flush()
        assert recorder.dropped == 0

        store.failures = 3  # the batch and both retries fail: two events dropped
        recorder.emit(MessageAdded("call_5", 3.0, "user", "lost"))
        recorder.emit(MessageAdded("call_5", 4.0, "user", "lost too"))
        await recorder.flush()
        assert recorder.dropped == 2

        recorder.emit(MessageAdded("call_5", 5.0, "user", "back"))  # the writer lives on
        await recorder.flush()
        assert not task.done()
    call = await store.get_call(None, "call_5")
    assert call is not None
    assert [m.message for m in call.messages] == ["Hello, how can I help?", "back"]


async def test_a_real_integrity_error_does_not_lose_the_rest_of_the_call(
    calls: CallStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = CallRecorder(calls, retry_delay=0)
    caplog.set_level(logging.CRITICAL, logger="ava.storage.recorder")
    async with running(recorder):
        for event in a_call("call_6", tenant_id="no-such-tenant"):  # foreign key violation
            recorder.emit(event)
        await recorder.flush()
    assert recorder.dropped == 1  # only the CallStarted
    call = await calls.get_call(None, "call_6")
    assert call is not None and call.status == "ended" and len(call.turns) == 2


async def test_flush_and_run_contracts(calls: CallStore) -> None:
    recorder = CallRecorder(calls)
    await recorder.flush()  # nothing queued: returns at once
    recorder.emit(TranscriptReceived("call_7", 1.0, "hi", is_final=True))  # not recorded
    await recorder.flush()
    recorder.emit(MessageAdded("call_7", 1.0, "user", "hi"))
    flushed = asyncio.create_task(recorder.flush())  # waits for the writer to start
    await asyncio.sleep(0.01)
    assert not flushed.done()
    async with running(recorder):
        await asyncio.wait_for(flushed, 10)
        with pytest.raises(RuntimeError, match="already running"):
            await recorder.run()
    assert await calls.get_call(None, "call_7") is not None

    recorder.emit(MessageAdded("call_7", 2.0, "user", "too late"))
    with pytest.raises(RuntimeError, match="stopped"):
        await recorder.flush()


async def test_recorded_calls_of_a_dead_node_are_closed(
    calls: CallStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    recorder = CallRecorder(calls, node_id="node-dead")
    async with running(recorder):
        for event in a_call("call_8")[:-1]:  # the process dies before CallEnded
            recorder.emit(event)
        await recorder.flush()
    orphans = OrphanStore(sessions)
    assert await orphans.nodes_with_unfinished_calls() == {"node-dead"}
    assert await orphans.close_calls_of("node-alive") == []
    assert len(await orphans.close_calls_of("node-dead")) == 1
    call = await calls.get_call(None, "call_8")
    assert call is not None and call.status == "ended"
    assert to_vapi(call)["endedReason"] == "call.in-progress.error-server-died"
    assert len(call.turns) == 2  # every finished turn survived


async def test_a_call_created_by_the_api_is_moved_to_in_progress(
    calls: CallStore, tenants: TenantStore
) -> None:
    tenant = await tenants.create_tenant("Acme")
    created = await calls.create_call(
        tenant.id, type="outboundPhoneCall", status="ringing", assistant_id="asst-1",
        to_number="+15550009",
    )  # fmt: skip
    recorder = CallRecorder(calls, node_id="node-1")
    wall = time.time()
    async with running(recorder):
        # The start names the call's tenant, as every stream's does: a row is only ever continued
        # by its own tenant (issue 9).
        meta = {"call_sid": "CA7", "tenant_id": tenant.id}
        recorder.emit(CallStarted(created.id, 0.0, wall, "twilio", "Sales", meta))
        await recorder.flush()
    call = await calls.get_call(tenant.id, created.id)
    assert call is not None and call.status == "in-progress"
    assert call.type == "outboundPhoneCall" and call.assistant_id == "asst-1"
    assert call.twilio_call_sid == "CA7" and call.to_number == "+15550009"
    assert call.started_at is not None and abs(call.started_at.timestamp() - wall) < 0.001
    assert to_vapi(call)["customer"] == {"number": "+15550009"}
