"""CallStore's writes for calls AVA places: the CallSid, forward-only status, deletion; and the
Vapi shape of status callbacks and transient assistants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.calls import CallStore, to_vapi
from storage.tenants import TenantStore
from voice.events import TurnLatency


async def test_twilio_sid_is_set_in_the_tenants_scope_only(
    calls: CallStore, tenants: TenantStore
) -> None:
    a, b = (await tenants.create_tenant("A")).id, (await tenants.create_tenant("B")).id
    call = await calls.create_call(a, type="outboundPhoneCall")
    assert not await calls.set_twilio_sid(b, call.id, "CA" + "1" * 32)
    assert await calls.set_twilio_sid(a, call.id, "CA" + "2" * 32)
    found = await calls.find_by_twilio_sid(a, "CA" + "2" * 32)
    assert found is not None and found.id == call.id
    assert await calls.find_by_twilio_sid(b, "CA" + "2" * 32) is None


async def test_advance_status_only_moves_forward(calls: CallStore, tenants: TenantStore) -> None:
    a = (await tenants.create_tenant("A")).id
    call = await calls.create_call(a, type="outboundPhoneCall")
    assert await calls.advance_status(a, call.id, "ringing")
    assert not await calls.advance_status(a, call.id, "queued")  # a late callback
    assert not await calls.advance_status(a, call.id, "ringing")
    assert await calls.advance_status(a, call.id, "in-progress")
    assert not await calls.advance_status(a, call.id, "ringing")
    await calls.finish_call(call.id, "customer-ended-call")
    assert not await calls.advance_status(a, call.id, "in-progress")
    got = await calls.get_call(a, call.id)
    assert got is not None and got.status == "ended"
    with pytest.raises(ValueError):
        await calls.advance_status(a, call.id, "ended")


async def test_delete_call_removes_its_children_in_scope(
    calls: CallStore, tenants: TenantStore
) -> None:
    a, b = (await tenants.create_tenant("A")).id, (await tenants.create_tenant("B")).id
    call = await calls.create_call(a, type="inboundPhoneCall")
    keep = await calls.create_call(a, type="inboundPhoneCall")
    for target in (call, keep):
        await calls.add_message(target.id, "user", "hello", time=1, seconds_from_start=0.1)
        await calls.add_turn(
            target.id, index=1, at=0.5, user_text="hello", assistant_text="hi",
            interrupted=False, latency=TurnLatency(0.8, 0.3, 0.1, 0.2, 0.2, 0.01),
        )  # fmt: skip
        await calls.add_event(target.id, "twilio-status", {"callStatus": "ringing"}, sequence=0)
    assert not await calls.delete_call(b, call.id)
    assert await calls.delete_call(a, call.id)
    assert await calls.get_call(a, call.id) is None
    assert not await calls.delete_call(a, call.id)
    kept = await calls.get_call(a, keep.id)
    assert kept is not None and len(kept.messages) == len(kept.turns) == len(kept.events) == 1
    # the deleted call's children are gone too: re-creating its id starts empty
    again = await calls.create_call(a, type="inboundPhoneCall", call_id=call.id)
    fresh = await calls.get_call(a, again.id)
    assert fresh is not None and not (fresh.messages or fresh.turns or fresh.events)


async def test_vapi_shape_orders_status_callbacks_and_lifts_a_transient_assistant(
    calls: CallStore, tenants: TenantStore
) -> None:
    a = (await tenants.create_tenant("A")).id
    call = await calls.create_call(
        a,
        type="outboundPhoneCall",
        twilio_call_sid="CA" + "3" * 32,
        to_number="+15557654321",
        metadata={"assistant": {"name": "Transient"}, "name": "promo"},
    )
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # arrival order differs from Twilio's order
    for status, sequence, seconds in (("completed", 3, 1), ("ringing", 1, 2), ("initiated", 0, 3)):
        data = {"callStatus": status}
        await calls.add_event(
            call.id, "twilio-status", data, sequence=sequence, at=t0 + timedelta(seconds=seconds)
        )
    got = await calls.get_call(a, call.id)
    assert got is not None
    vapi = to_vapi(got)
    statuses = [
        (c["sequenceNumber"], c["callStatus"]) for c in vapi["transport"]["statusCallbacks"]
    ]
    assert statuses == [(0, "initiated"), (1, "ringing"), (3, "completed")]
    assert vapi["assistant"] == {"name": "Transient"}
    assert vapi["metadata"] == {"name": "promo"}
    assert vapi["customer"] == {"number": "+15557654321"}
