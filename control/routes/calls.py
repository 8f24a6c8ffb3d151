"""`/call`: the tenant's calls in Vapi's Call shape; placing, ending and deleting them.

`POST /call` places an outbound call through the number's Twilio account; the call's
`monitor.controlUrl` (`POST /call/{id}/control`, behind the same API key: unlike Vapi's it is
never open to whoever holds the URL) ends it live.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from control.deps import StateDep, StoresDep, TenantDep
from control.errors import ApiError, not_found, validation_messages
from control.outbound import OUTBOUND, outbound_twiml, twilio_for
from control.providers import assistant_problems
from control.state import AppState
from control.twilio_auth import external_url
from control.twilio_rest import TwilioRestError
from control.twilio_routes import MEDIA_PATH
from control.twilio_status import STATUS_PATH
from storage import CallRecord, CallStatus, to_vapi
from storage.crypto import seal_secrets
from storage.tables import CALL_STATUSES
from voice.assistant import Assistant
from voice.types import EndedReason

__all__ = ["NEXT_CURSOR_HEADER", "router"]

log = logging.getLogger("ava.api")
router = APIRouter(prefix="/call", tags=["calls"])

# Vapi's list is a bare JSON array (its SDKs parse it as one), so the cursor rides in a header.
NEXT_CURSOR_HEADER = "X-Next-Cursor"
TWILIO_FAILED = "twilio-failed-to-connect-call"
_E164 = r"^\+[1-9]\d{1,14}$"

JsonObject = dict[str, Any]


def _aware(value: datetime | None) -> datetime | None:
    # A timestamp without an offset is taken as UTC, as Vapi does.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _base_url(state: AppState, request: Request) -> str:
    return external_url(state, request.headers, request.url.scheme, "/", False).rstrip("/")


def _call_json(record: CallRecord, base_url: str) -> JsonObject:
    out = to_vapi(record)
    out["monitor"] = {"controlUrl": f"{base_url}/call/{record.id}/control"}
    return out


class _Dto(BaseModel):
    # extra="ignore": Vapi's DTOs carry fields AVA does not act on; clients sending them must
    # not be refused.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Customer(_Dto):
    number: str = Field(pattern=_E164)
    name: str | None = None


class CallCreate(_Dto):
    assistant_id: str | None = None
    assistant: dict[str, Any] | None = None
    phone_number_id: str | None = None
    customer: Customer | None = None
    name: str | None = Field(default=None, max_length=40)


class ControlMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


async def _resolve_assistant(
    state: AppState, tenant_id: str, body: CallCreate
) -> dict[str, Any] | None:
    """Checks the assistant; returns the transient one's JSON, None for a stored one."""
    if (body.assistant_id is None) == (body.assistant is None):
        raise ApiError(422, ["assistantId: give exactly one of assistantId and assistant"])
    if body.assistant is not None:
        try:
            transient = Assistant.model_validate(body.assistant)
        except ValidationError as exc:
            raise ApiError(422, validation_messages(exc.errors(), prefix=("assistant",))) from exc
        problems = await assistant_problems(transient, state.stores, tenant_id)
        if problems:
            raise ApiError(422, [f"assistant.{problem}" for problem in problems])
        return body.assistant
    if await state.stores.assistants.get(tenant_id, cast(str, body.assistant_id)) is None:
        raise ApiError(422, [f"assistantId: assistant {body.assistant_id} not found"])
    return None


@router.post("", status_code=201)
async def create_call(
    body: CallCreate, request: Request, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    """An outbound call from one of the tenant's numbers, through its Twilio account."""
    stores = state.stores
    inline = await _resolve_assistant(state, tenant_id, body)
    if body.phone_number_id is None:
        raise ApiError(422, ["phoneNumberId: AVA calls from an imported number; give its id"])
    if body.customer is None:
        raise ApiError(422, ["customer.number: the number to call is required"])
    number = await stores.phone_numbers.get(tenant_id, body.phone_number_id)
    if number is None:
        raise ApiError(422, [f"phoneNumberId: phone number {body.phone_number_id} not found"])
    credentials = await stores.phone_numbers.credentials(tenant_id, number.id)
    twilio = twilio_for(state.settings, credentials)
    if twilio is None:  # an imported number always has credentials; kept for the type
        raise ApiError(422, ["phoneNumberId: the number has no Twilio credentials"])
    # A transient assistant's webhook secrets are sealed like a stored assistant's.
    metadata: dict[str, Any] = (
        {"assistant": seal_secrets(inline, stores.box)} if inline is not None else {}
    )
    if body.name:
        metadata["name"] = body.name
    call = await stores.calls.create_call(
        tenant_id,
        type=OUTBOUND,
        status="queued",
        assistant_id=body.assistant_id,
        phone_number_id=number.id,
        from_number=number.number,
        to_number=body.customer.number,
        metadata=metadata,
    )
    headers, scheme = request.headers, request.url.scheme
    twiml = outbound_twiml(
        state.settings, external_url(state, headers, scheme, MEDIA_PATH, True), call
    )
    try:
        async with twilio:
            call_sid = await twilio.create_call(
                to=body.customer.number,
                from_=number.number,
                twiml=twiml,
                status_callback=external_url(state, headers, scheme, STATUS_PATH, False),
            )
    except TwilioRestError as exc:
        # The record stays, ended, so the attempt and Twilio's reason are on file.
        await stores.calls.finish_call(call.id, TWILIO_FAILED, str(exc))
        status = 502 if exc.retryable else 400
        raise ApiError(status, f"Twilio did not place the call (call {call.id}): {exc}") from exc
    await stores.calls.set_twilio_sid(tenant_id, call.id, call_sid)
    record = await stores.calls.get_call(tenant_id, call.id)
    assert record is not None  # written above, in this tenant
    return _call_json(record, _base_url(state, request))


@router.get("")
async def list_calls(
    request: Request,
    response: Response,
    state: StateDep,
    tenant_id: TenantDep,
    assistant_id: Annotated[str | None, Query(alias="assistantId")] = None,
    phone_number_id: Annotated[str | None, Query(alias="phoneNumberId")] = None,
    status: str | None = None,
    created_at_gt: Annotated[datetime | None, Query(alias="createdAtGt")] = None,
    created_at_lt: Annotated[datetime | None, Query(alias="createdAtLt")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> list[JsonObject]:
    if status is not None and status not in CALL_STATUSES:
        raise ApiError(422, [f"status: must be one of {', '.join(CALL_STATUSES)}"])
    try:
        page = await state.stores.calls.list_calls(
            tenant_id,
            assistant_id=assistant_id,
            phone_number_id=phone_number_id,
            status=cast(CallStatus | None, status),
            created_after=_aware(created_at_gt),
            created_before=_aware(created_at_lt),
            limit=limit,
            cursor=cursor,
            details=True,
        )
    except ValueError as exc:
        raise ApiError(422, [f"cursor: {exc}"]) from exc
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    base = _base_url(state, request)
    return [_call_json(call, base) for call in page.items]


@router.get("/{call_id}")
async def get_call(
    call_id: str, request: Request, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    record = await state.stores.calls.get_call(tenant_id, call_id)
    if record is None:
        raise not_found("call")
    return _call_json(record, _base_url(state, request))


@router.post("/{call_id}/control")
async def control_call(
    call_id: str,
    request: Request,
    state: StateDep,
    tenant_id: TenantDep,
    body: Annotated[JsonObject, Body()],
) -> JsonObject:
    """Vapi's live control; AVA acts on `{"type": "end-call"}`."""
    record = await state.stores.calls.get_call(tenant_id, call_id, details=False)
    if record is None:
        raise not_found("call")  # before validating the body: no existence leak
    try:
        message = ControlMessage.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, validation_messages(exc.errors())) from exc
    if message.type != "end-call":
        raise ApiError(
            400, f"control type {message.type!r} is not supported; AVA supports end-call"
        )
    if record.status != "ended":
        await _end_call(state, record)
    ended = await state.stores.calls.get_call(tenant_id, call_id)
    assert ended is not None
    return _call_json(ended, _base_url(state, request))


async def _end_call(state: AppState, record: CallRecord) -> None:
    """End the record (first end wins), hang up the live session, hang up Twilio's leg."""
    detail = "ended through the API"
    await state.stores.calls.finish_call(record.id, EndedReason.MANUALLY_CANCELED, detail)
    session = state.calls.live.get(record.id)
    if session is not None:
        session.hang_up(EndedReason.MANUALLY_CANCELED, detail)
    if not record.twilio_call_sid:
        return
    credentials = None
    if record.tenant_id is not None and record.phone_number_id is not None:
        credentials = await state.stores.phone_numbers.credentials(
            record.tenant_id, record.phone_number_id
        )
    twilio = twilio_for(state.settings, credentials)
    if twilio is None:
        return  # dev mode: no account to ask; closing the media stream ends the call
    try:
        async with twilio:
            await twilio.end_call(record.twilio_call_sid)
    except TwilioRestError as exc:
        if session is None:
            # Nothing of ours held the call: Twilio's leg may still be up.
            raise ApiError(502, f"Twilio did not end call {record.id}: {exc}") from exc
        log.warning(
            "call %s: Twilio hang-up failed (%s); the media stream was closed", record.id, exc
        )


@router.delete("/{call_id}")
async def delete_call(
    call_id: str, request: Request, stores: StoresDep, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    record = await stores.calls.get_call(tenant_id, call_id)
    if record is None:
        raise not_found("call")
    if record.status != "ended":
        raise ApiError(409, f"call {call_id} is {record.status}; end it first (end-call)")
    if not await stores.calls.delete_call(tenant_id, call_id):
        raise not_found("call")
    return _call_json(record, _base_url(state, request))
