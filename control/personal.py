"""A call's {{variables}}: its assistant rendered once before anything speaks, and what its
record keeps of them (voice.variables, voice.assistant.personalize). Shared by phone and browser
calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from control.state import AppState
from storage.crypto import seal_secrets
from storage.vapi import UNKNOWN_VARIABLES, VARIABLE_VALUES
from voice.assistant import Assistant, Personalized, personalize

__all__ = ["caller_as_customer", "personalize_for_call", "record_personalized"]

log = logging.getLogger("ava.calls")


async def personalize_for_call(assistant: Assistant, customer: Mapping[str, Any]) -> Personalized:
    """Render now, in a thread: a 100k-character prompt full of variables takes ~0.1 s, which
    would stall every other call's paced audio on this loop. Raises ConfigError naming the
    field."""
    return await asyncio.to_thread(personalize, assistant, now=datetime.now(UTC), customer=customer)


def caller_as_customer(metadata: dict[str, str]) -> dict[str, str]:
    """Vapi's `customer` of an inbound call: the caller."""
    number = metadata.get("from")
    return {"number": number} if number else {}


async def record_personalized(
    state: AppState,
    call_id: str,
    metadata: dict[str, str],
    personal: Personalized,
    transient: Assistant | None,
) -> None:
    """What the call's record keeps of its variables (the values its templates saw and the
    unknown ones) and, for an assistant-request's answer, the effective assistant. Written
    before the session starts, so an inbound call's row may be made here; a call without
    templates, values or a transient assistant writes nothing."""
    notes: dict[str, object] = {}
    if personal.templates or personal.assistant.variable_values:
        notes[VARIABLE_VALUES] = personal.variables
        notes[UNKNOWN_VARIABLES] = list(personal.unknown)
    if transient is not None:
        notes["assistant"] = seal_secrets(transient.to_json(), state.stores.box)
    if not notes:
        return
    if personal.unknown:
        log.info("call %s: unknown template variables: %s", call_id, ", ".join(personal.unknown))
    create = {
        "type": metadata.get("type") or "inboundPhoneCall",
        "assistant_id": metadata.get("assistant_id") or None,
        "phone_number_id": metadata.get("phone_number_id") or None,
        "twilio_call_sid": metadata.get("call_sid") or None,
        "stream_sid": metadata.get("stream_sid") or None,
        "from_number": metadata.get("from") or None,
        "to_number": metadata.get("to") or None,
    }
    tenant_id = metadata.get("tenant_id") or None
    if not await state.stores.calls.add_metadata(tenant_id, call_id, notes, create=create):
        log.error("call %s: its id is another tenant's call; variables not recorded", call_id)
