"""CallStore: tenant-scoped reads, listing and paging, the call loop's writes, orphan closing, and
Vapi's Call JSON."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.calls import CallStore, to_vapi
from storage.orphans import NODE_DIED_REASON, OrphanStore
from storage.tables import CallTurnRow
from storage.tenants import TenantStore
from voice.events import TurnLatency

LATENCY = TurnLatency(
    voice_to_voice=1.2, endpointing=0.3, stt=0.12, llm_ttft=0.25, tts_ttfb=0.2, server=0.05,
    held=0.4,
)  # fmt: skip


async def two_tenants(tenants: TenantStore) -> tuple[str, str]:
    a, b = await tenants.create_tenant("A"), await tenants.create_tenant("B")
    return a.id, b.id


async def test_create_and_get_are_tenant_scoped(calls: CallStore, tenants: TenantStore) -> None:
    a, b = await two_tenants(tenants)
    call = await calls.create_call(a, type="inboundPhoneCall", from_number="+15550001")
    dev = await calls.create_call(None, type="webCall")

    got = await calls.get_call(a, call.id)
    assert got is not None and got.tenant_id == a and got.status == "queued"
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert await calls.get_call(b, call.id) is None
    assert await calls.get_call(None, call.id) is None  # dev scope is not "any tenant"
    assert await calls.get_call(a, dev.id) is None
    assert (await calls.get_call(None, dev.id)) is not None
    assert [c.id for c in (await calls.list_calls(b)).items] == []
    assert [c.id for c in (await calls.list_calls(None)).items] == [dev.id]


async def test_list_filters_and_cursor_paging(calls: CallStore, tenants: TenantStore) -> None:
    a, b = await two_tenants(tenants)
    made = []
    for i in range(7):
        made.append(
            await calls.create_call(
                a,
                type="outboundPhoneCall",
                assistant_id="asst-1" if i % 2 else "asst-2",
                phone_number_id="pn-1" if i < 3 else None,
                status="ringing" if i == 6 else "queued",
            )
        )
    await calls.create_call(b, type="webCall", assistant_id="asst-1")
    newest_first = [c.id for c in reversed(made)]

    seen: list[str] = []
    cursor = None
    while True:
        page = await calls.list_calls(a, limit=3, cursor=cursor)
        seen.extend(c.id for c in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first

    by_assistant = await calls.list_calls(a, assistant_id="asst-1")
    assert {c.id for c in by_assistant.items} == {made[i].id for i in (1, 3, 5)}
    by_number = await calls.list_calls(a, phone_number_id="pn-1")
    assert {c.id for c in by_number.items} == {made[i].id for i in (0, 1, 2)}
    ringing = await calls.list_calls(a, status="ringing")
    assert [c.id for c in ringing.items] == [made[6].id]

    after = await calls.list_calls(a, created_after=made[4].created_at)
    assert {c.id for c in after.items} == {made[5].id, made[6].id}
    before = await calls.list_calls(a, created_before=made[1].created_at)
    assert [c.id for c in before.items] == [made[0].id]

    with pytest.raises(ValueError, match="timezone-aware"):
        await calls.list_calls(a, created_after=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="cursor"):
        await calls.list_calls(a, cursor="not-a-cursor")


async def test_records_messages_turns_events_and_vapi_shape(calls: CallStore) -> None:
    start = datetime(2025, 6, 17, 18, 9, 30, 408000, tzinfo=UTC)
    call = await calls.create_call(
        None,
        type="inboundPhoneCall",
        status="in-progress",
        twilio_call_sid="CA123",
        from_number="+15550001",
        to_number="+15550002",
        started_at=start,
    )
    t0 = round(start.timestamp() * 1000)
    await calls.add_message(
        call.id, "assistant", "Hello!", time=t0, seconds_from_start=0.0, duration=1.2
    )
    await calls.add_message(
        call.id, "user", "Hi there", time=t0 + 2000, seconds_from_start=2.0, duration=0.9
    )
    await calls.add_message(
        call.id, "bot", "How can", time=t0 + 3500, seconds_from_start=3.5, interrupted=True
    )
    await calls.add_turn(
        call.id, index=0, at=3.5, user_text="Hi there", assistant_text="How can",
        interrupted=True, latency=LATENCY,
    )  # fmt: skip
    await calls.add_turn(
        call.id, index=1, at=6.0, user_text="x", assistant_text="", interrupted=True, latency=None
    )
    assert await calls.add_event(call.id, "barge-in", {"heard": "How can"})
    assert await calls.finish_call(call.id, "customer-ended-call", "caller hung up")
    assert not await calls.finish_call(call.id, "silence-timed-out")  # the first end wins

    got = await calls.get_call(None, call.id)
    assert got is not None
    assert [m.role for m in got.messages] == ["bot", "user", "bot"]
    assert [m.seq for m in got.messages] == [0, 1, 2]
    assert got.turns[0].latency == LATENCY and got.turns[1].latency is None
    assert got.status == "ended" and got.ended_reason == "customer-ended-call"

    vapi = to_vapi(got)
    assert vapi["id"] == call.id and vapi["orgId"] is None
    assert vapi["type"] == "inboundPhoneCall" and vapi["status"] == "ended"
    assert vapi["endedReason"] == "customer-ended-call"
    assert vapi["endedMessage"] == "caller hung up"
    assert vapi["startedAt"] == "2025-06-17T18:09:30.408Z"
    assert vapi["createdAt"].endswith("Z") and vapi["endedAt"].endswith("Z")
    assert vapi["customer"] == {"number": "+15550001"}
    assert vapi["phoneCallProviderId"] == "CA123"
    assert vapi["messages"][0] == {
        "role": "bot",
        "message": "Hello!",
        "time": t0,
        "endTime": t0 + 1200,
        "duration": 1200,
        "secondsFromStart": 0.0,
    }
    assert vapi["messages"][2]["interrupted"] is True
    artifact = vapi["artifact"]
    assert artifact["transcript"] == "AI: Hello!\nUser: Hi there\nAI: How can"
    assert vapi["transcript"] == artifact["transcript"]
    assert artifact["messages"] == vapi["messages"]
    assert artifact["messagesOpenAIFormatted"][1] == {"role": "user", "content": "Hi there"}
    metrics = artifact["performanceMetrics"]
    assert metrics["turnLatencies"] == [
        {
            "modelLatency": 250,
            "voiceLatency": 200,
            "transcriberLatency": 120,
            "endpointingLatency": 300,
            "turnLatency": 1200,
            "serverLatency": 50,
            "heldLatency": 400,
        }
    ]
    assert metrics["turnLatencyAverage"] == 1200
    assert metrics["heldLatencyAverage"] == 400
    assert metrics["numUserInterrupted"] == 1
    assert vapi["costs"] == [] and vapi["cost"] == 0


async def test_a_turn_recorded_before_held_was_stored_reads_held_0(
    calls: CallStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    call = await calls.create_call(None, type="webCall", status="in-progress")
    await calls.add_turn(
        call.id, index=0, at=1.0, user_text="hi", assistant_text="hello", interrupted=False,
        latency=LATENCY,
    )  # fmt: skip
    async with sessions.begin() as session:  # what migration 0009 leaves on an older turn
        await session.execute(update(CallTurnRow).values(held=None))
    got = await calls.get_call(None, call.id)
    assert got is not None
    latency = got.turns[0].latency
    assert latency is not None and latency.held == 0.0
    assert latency.server == LATENCY.server and latency.voice_to_voice == LATENCY.voice_to_voice
    turn = to_vapi(got)["artifact"]["performanceMetrics"]["turnLatencies"][0]
    assert turn["heldLatency"] == 0 and turn["turnLatency"] == 1200


async def test_tool_messages_map_to_vapi_roles(calls: CallStore) -> None:
    call = await calls.create_call(None, type="webCall", status="in-progress")
    tool_call = {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    await calls.add_message(
        call.id, "assistant", "", time=1, seconds_from_start=1, tool_calls=[tool_call]
    )
    await calls.add_message(
        call.id, "tool", "sunny", time=2, seconds_from_start=2, tool_call_id="call_x", name="f"
    )
    got = await calls.get_call(None, call.id)
    assert got is not None
    messages = to_vapi(got)["messages"]
    assert messages[0]["role"] == "tool_calls" and messages[0]["toolCalls"] == [tool_call]
    assert messages[1]["role"] == "tool_call_result"
    assert messages[1]["toolCallId"] == "call_x" and messages[1]["result"] == "sunny"
    assert "customer" not in to_vapi(got)  # a web call has no phone customer


async def test_turns_are_idempotent_and_events_dedupe_by_sequence(calls: CallStore) -> None:
    call = await calls.create_call(None, type="webCall", status="in-progress")
    for text in ("first", "retried"):
        await calls.add_turn(
            call.id, index=0, at=1.0, user_text=text, assistant_text="a", interrupted=False,
            latency=LATENCY,
        )  # fmt: skip
    assert await calls.add_event(call.id, "twilio-status", {"CallStatus": "ringing"}, sequence=0)
    assert not await calls.add_event(call.id, "twilio-status", {"again": 1}, sequence=0)
    assert await calls.add_event(call.id, "twilio-status", {"CallStatus": "completed"}, sequence=1)
    got = await calls.get_call(None, call.id)
    assert got is not None
    assert [t.user_text for t in got.turns] == ["retried"]
    assert [e.sequence for e in got.events] == [0, 1]


async def test_status_moves_forward_but_never_unends(
    calls: CallStore, tenants: TenantStore
) -> None:
    a, b = await two_tenants(tenants)
    call = await calls.create_call(a, type="outboundPhoneCall", twilio_call_sid="CA9")
    assert not await calls.update_status(b, call.id, "ringing")  # other tenant: no effect
    assert await calls.update_status(a, call.id, "ringing")
    found = await calls.find_by_twilio_sid(a, "CA9")
    assert found is not None and found.status == "ringing"
    assert await calls.find_by_twilio_sid(b, "CA9") is None
    await calls.finish_call(call.id, "customer-did-not-answer")
    assert not await calls.update_status(a, call.id, "in-progress")
    with pytest.raises(ValueError):
        await calls.update_status(a, call.id, "ended")


async def test_a_nodes_unfinished_calls_are_closed_and_returned(
    calls: CallStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    orphans = OrphanStore(sessions)
    live_here = await calls.create_call(
        None, type="inboundPhoneCall", status="in-progress", node_id="n1", twilio_call_sid="CA1"
    )
    ringing_here = await calls.create_call(
        None, type="inboundPhoneCall", status="ringing", node_id="n1"
    )
    other_node = await calls.create_call(None, type="webCall", status="in-progress", node_id="n2")
    done = await calls.create_call(None, type="webCall", status="in-progress", node_id="n1")
    await calls.finish_call(done.id, "customer-ended-call")
    unowned = await calls.create_call(None, type="outboundPhoneCall", status="queued")

    assert await orphans.nodes_with_unfinished_calls() == {"n1", "n2", None}
    closed = await orphans.close_calls_of("n1", detail="node n1 stopped")
    assert {c.id for c in closed} == {live_here.id, ringing_here.id}
    assert next(c for c in closed if c.id == live_here.id).twilio_call_sid == "CA1"
    for call_id in (live_here.id, ringing_here.id):
        got = await calls.get_call(None, call_id, details=False)
        assert got is not None and got.status == "ended"
        assert got.ended_reason == NODE_DIED_REASON and got.ended_at is not None
        assert got.ended_detail == "node n1 stopped"
    still = await calls.get_call(None, other_node.id)
    assert still is not None and still.status == "in-progress"
    finished = await calls.get_call(None, done.id)
    assert finished is not None and finished.ended_reason == "customer-ended-call"
    assert await orphans.close_calls_of("n1") == []  # nothing twice

    assert [c.id for c in await orphans.close_calls_of(None)] == [unowned.id]
    assert await orphans.nodes_with_unfinished_calls() == {"n2"}


async def test_list_with_details_loads_children_for_the_page(calls: CallStore) -> None:
    ids = []
    for _ in range(3):
        call = await calls.create_call(None, type="webCall", status="in-progress")
        await calls.add_message(call.id, "user", call.id, time=1, seconds_from_start=0.5)
        ids.append(call.id)
        await asyncio.sleep(0)
    page = await calls.list_calls(None, details=True)
    assert {c.id: [m.message for m in c.messages] for c in page.items} == {i: [i] for i in ids}
    plain = await calls.list_calls(None)
    assert all(c.messages == () for c in plain.items)
