"""`/call`: the tenant's calls in Vapi's Call shape; placing, ending and deleting them.

`POST /call` places an outbound call through the number's Twilio account; the call's
`monitor.controlUrl` (`POST /call/{id}/control`, behind the same API key: unlike Vapi's it is
never open to whoever holds the URL) controls it live, on whichever node holds it; its
`monitor.listenUrl` (a websocket, control/listen.py) streams its live audio, likewise.

`assistantOverrides` (the call's, then `customer.assistantOverrides`) are deep-merged onto the
assistant (`voice.variables.merge_overrides`) and the result validated like any assistant; that
effective assistant is stored on the call (and shown as its `assistant`). Its `variableValues`
and Vapi's built-ins fill its `{{templates}}` when the call connects (control/twilio_routes.py).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from control.control_commands import END_CALL_DETAIL, EndCallCommand, parse_command
from control.deps import StateDep, StoresDep, TenantDep
from control.errors import ApiError, not_found, validation_messages
from control.listen import listen_url
from control.live_control import LiveControl
from control.outbound import (
    OUTBOUND,
    PlacementFailed,
    hang_up_at_twilio,
    place_outbound,
)
from control.providers import assistant_problems
from control.recordings import add_presigned_urls
from control.scheduling import (
    MAX_BATCH,
    CallScheduler,
    SchedulePlan,
    checked_window,
    schedule_metadata,
)
from control.state import AppState
from control.twilio_auth import external_url
from control.twilio_rest import TwilioRestError
from control.twilio_routes import MEDIA_PATH
from control.twilio_status import STATUS_PATH
from control.voicemail import AMD_PATH
from storage import CallRecord, CallStatus, to_vapi
from storage.calls import FILTER_FIELD
from storage.crypto import seal_secrets
from storage.tables import CALL_STATUSES
from storage.vapi import CUSTOMER
from voice.assistant import Assistant
from voice.types import EndedReason
from voice.variables import merge_overrides

__all__ = ["NEXT_CURSOR_HEADER", "router"]

log = logging.getLogger("ava.api")
router = APIRouter(prefix="/call", tags=["calls"])

# Vapi's list is a bare JSON array (its SDKs parse it as one), so the cursor rides in a header.
NEXT_CURSOR_HEADER = "X-Next-Cursor"
_E164 = r"^\+[1-9]\d{1,14}$"

JsonObject = dict[str, Any]
_STRUCTURED = "analysis.structuredData."
_MAX_FILTERS = 8
_MAX_FILTER_VALUE = 256


def _aware(value: datetime | None) -> datetime | None:
    # A timestamp without an offset is taken as UTC, as Vapi does.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _base_url(state: AppState, request: Request) -> str:
    return external_url(state, request.headers, request.url.scheme, "/", False).rstrip("/")


def _call_json(record: CallRecord, base_url: str) -> JsonObject:
    out = to_vapi(record)
    out["monitor"] = {
        "listenUrl": listen_url(base_url, record.id),  # control/listen.py: the live audio
        "controlUrl": f"{base_url}/call/{record.id}/control",
    }
    return out


class _Dto(BaseModel):
    # extra="ignore": Vapi's DTOs carry fields AVA does not act on; clients sending them must
    # not be refused.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Customer(_Dto):
    number: str = Field(pattern=_E164)
    # The call's templates see these as {{customer.name}} etc. Bounded: a name as Vapi does,
    # an email address as RFC 5321 does, an external id as AVA's own ids are.
    name: str | None = Field(default=None, max_length=40)
    email: str | None = Field(default=None, max_length=254)
    external_id: str | None = Field(default=None, max_length=64)
    assistant_overrides: dict[str, Any] | None = None

    def known(self) -> dict[str, str]:
        """What the call keeps of the customer, besides the number, in Vapi's names."""
        fields = {"name": self.name, "email": self.email, "externalId": self.external_id}
        return {k: v for k, v in fields.items() if v}


class CallCreate(_Dto):
    assistant_id: str | None = None
    assistant: dict[str, Any] | None = None
    assistant_overrides: dict[str, Any] | None = None
    phone_number_id: str | None = None
    customer: Customer | None = None
    # Vapi's batch: a call per customer, each scheduled (now, or by `schedulePlan`).
    customers: list[Customer] | None = Field(default=None, min_length=1, max_length=MAX_BATCH)
    schedule_plan: SchedulePlan | None = None
    name: str | None = Field(default=None, max_length=40)


_STAMPS = ("id", "orgId", "createdAt", "updatedAt")


async def _resolve_assistant(
    state: AppState, tenant_id: str, body: CallCreate
) -> dict[str, Any] | None:
    """Checks the assistant and its overrides; returns the call's own assistant JSON (a
    transient one, or any with overrides merged in), None for a stored one as it is."""
    if (body.assistant_id is None) == (body.assistant is None):
        raise ApiError(422, ["assistantId: give exactly one of assistantId and assistant"])
    base: dict[str, Any]
    if body.assistant is not None:
        await _checked(state, tenant_id, body.assistant, "assistant")
        base = body.assistant
    else:
        record = await state.stores.assistants.get(tenant_id, cast(str, body.assistant_id))
        if record is None:
            raise ApiError(422, [f"assistantId: assistant {body.assistant_id} not found"])
        base = {k: v for k, v in record.config.items() if k not in _STAMPS}
    overrides = [("assistantOverrides", body.assistant_overrides)]
    if body.customer is not None:
        overrides.append(("customer.assistantOverrides", body.customer.assistant_overrides))
    effective = base
    for where, given in overrides:
        if given:
            effective = await _overridden(state, tenant_id, effective, given, where)
    return None if effective is base and body.assistant is None else effective


async def _checked(state: AppState, tenant_id: str, config: dict[str, Any], where: str) -> None:
    """422 naming the field (under `where`) for an assistant AVA would not run."""
    try:
        assistant = Assistant.model_validate(config)
    except ValidationError as exc:
        raise ApiError(422, validation_messages(exc.errors(), prefix=(where,))) from exc
    problems = await assistant_problems(assistant, state.stores, tenant_id)
    # The tenant's own tools only (another tenant's look like none at all), as on /assistant.
    problems += [
        f"model.toolIds: tool {tool_id} not found"
        for tool_id in assistant.model.tool_ids
        if await state.stores.tools.get(tenant_id, tool_id) is None
    ]
    if problems:
        raise ApiError(422, [f"{where}.{problem}" for problem in problems])


async def _overridden(
    state: AppState,
    tenant_id: str,
    base: dict[str, Any],
    overrides: dict[str, Any],
    where: str,
) -> dict[str, Any]:
    """`overrides` merged onto `base`, validated like an assistant (errors name the field
    under `where`: the base was valid, so what is wrong came with the overrides)."""
    try:
        merged = merge_overrides(base, overrides)
    except ValueError as exc:
        raise ApiError(422, [f"{where}.{exc}"]) from exc
    await _checked(state, tenant_id, merged, where)
    return merged


@router.post("", status_code=201)
async def create_call(
    body: CallCreate, request: Request, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    """An outbound call from one of the tenant's numbers, through its Twilio account: placed
    now, or with `schedulePlan` and for each of `customers[]` stored as `scheduled` and placed
    by the scheduler (control/scheduling.py). A batch answers Vapi's `{results, errors}`."""
    stores = state.stores
    # The assistant and the call's overrides first, whatever else is wrong (each customer's
    # own overrides are checked with the customer).
    shared = await _resolve_assistant(state, tenant_id, body.model_copy(update={"customer": None}))
    if body.phone_number_id is None:
        raise ApiError(422, ["phoneNumberId: AVA calls from an imported number; give its id"])
    if (body.customer is None) == (body.customers is None):
        raise ApiError(422, ["customer.number: give the number to call (or customers[])"])
    number = await stores.phone_numbers.get(tenant_id, body.phone_number_id)
    if number is None:
        raise ApiError(422, [f"phoneNumberId: phone number {body.phone_number_id} not found"])
    if await stores.phone_numbers.credentials(tenant_id, number.id) is None:
        raise ApiError(422, ["phoneNumberId: the number has no Twilio credentials"])
    now = datetime.now(UTC)
    window: tuple[datetime, datetime | None] | None = None
    if body.schedule_plan is not None:
        try:
            window = checked_window(body.schedule_plan, now)
        except ValueError as exc:
            raise ApiError(422, [str(exc)]) from exc
    headers, scheme = request.headers, request.url.scheme
    stream_url = external_url(state, headers, scheme, MEDIA_PATH, True)
    status_url = external_url(state, headers, scheme, STATUS_PATH, False)
    amd_url = external_url(state, headers, scheme, AMD_PATH, False)
    base = _base_url(state, request)
    if body.customers is None and window is None:
        assert body.customer is not None
        own = body.customer.assistant_overrides
        inline = await _resolve_assistant(state, tenant_id, body) if own else shared
        call = await stores.calls.create_call(
            tenant_id, **_new_call(state, body, body.customer, inline, number.id, number.number)
        )
        try:
            await place_outbound(
                state, call, stream_url=stream_url, status_url=status_url, amd_url=amd_url
            )
        except PlacementFailed as exc:
            raise ApiError(502 if exc.retryable else 400, str(exc)) from exc
        record = await stores.calls.get_call(tenant_id, call.id)
        assert record is not None  # written above, in this tenant
        return _call_json(record, base)
    earliest, latest = window if window is not None else (now, None)
    results: list[JsonObject] = []
    errors: list[JsonObject] = []
    for customer in body.customers if body.customers is not None else [body.customer]:
        assert customer is not None
        try:
            one = body.model_copy(update={"customer": customer})
            own = customer.assistant_overrides
            inline = await _resolve_assistant(state, tenant_id, one) if own else shared
        except ApiError as exc:
            if body.customers is None:
                raise
            messages = exc.message if isinstance(exc.message, list) else [exc.message]
            shown = customer.model_dump(by_alias=True, exclude_none=True)
            errors.append({"customer": shown, "error": "; ".join(messages)})
            continue
        fields = _new_call(state, body, customer, inline, number.id, number.number)
        fields["metadata"] |= schedule_metadata(
            earliest, latest, stream_url=stream_url, status_url=status_url, amd_url=amd_url
        )
        call = await stores.calls.create_call(
            tenant_id, **fields, status="scheduled", scheduled_at=earliest
        )
        results.append(_call_json(call, base))
    scheduler: CallScheduler | None = getattr(request.app.state, "scheduler", None)
    if scheduler is not None and earliest <= now:
        scheduler.poke()  # due now: placed within moments, not at the next round
    if body.customers is None:
        return results[0]
    return {"results": results, "errors": errors}


def _new_call(
    state: AppState,
    body: CallCreate,
    customer: Customer,
    inline: dict[str, Any] | None,
    number_id: str,
    from_number: str,
) -> dict[str, Any]:
    """`create_call`'s fields for one outbound call to `customer`."""
    # A transient assistant's webhook secrets are sealed like a stored assistant's.
    metadata: dict[str, Any] = (
        {"assistant": seal_secrets(inline, state.stores.box)} if inline is not None else {}
    )
    if body.name:
        metadata["name"] = body.name
    if customer.known():
        metadata[CUSTOMER] = customer.known()
    return {
        "type": OUTBOUND,
        "assistant_id": body.assistant_id,
        "phone_number_id": number_id,
        "from_number": from_number,
        "to_number": customer.number,
        "metadata": metadata,
    }


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
    success_evaluation: Annotated[
        str | None, Query(alias="analysis.successEvaluation", max_length=_MAX_FILTER_VALUE)
    ] = None,
) -> list[JsonObject]:
    """Newest first. `analysis.successEvaluation=<value>` and
    `analysis.structuredData.<field>=<value>` filter on the call's analysis (a field's value as
    text: "true", "3", "Paris"); `analysis.structuredData.<field>` alone: the field is there."""
    if status is not None and status not in CALL_STATUSES:
        raise ApiError(422, [f"status: must be one of {', '.join(CALL_STATUSES)}"])
    structured = _structured_filters(request)
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
            success_evaluation=success_evaluation,
            structured_data=structured,
        )
    except ValueError as exc:
        raise ApiError(422, [f"cursor: {exc}"]) from exc
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    base = _base_url(state, request)
    return [_call_json(call, base) for call in page.items]


def _structured_filters(request: Request) -> dict[str, str | None]:
    """`analysis.structuredData.<field>[=<value>]` query parameters (bounded in number, names
    and values); an empty value means "present"."""
    out: dict[str, str | None] = {}
    for key, value in request.query_params.multi_items():
        if not key.startswith("analysis.") or key == "analysis.successEvaluation":
            continue
        name = key.removeprefix(_STRUCTURED)
        if not key.startswith(_STRUCTURED) or not FILTER_FIELD.fullmatch(name):
            wanted = "analysis.successEvaluation or analysis.structuredData.<field>"
            raise ApiError(422, [f"{key[:80]}: filter on {wanted} (letters, digits, _)"])
        if len(value) > _MAX_FILTER_VALUE:
            raise ApiError(422, [f"{key}: at most {_MAX_FILTER_VALUE} characters"])
        out[name] = value or None
    if len(out) > _MAX_FILTERS:
        raise ApiError(422, [f"analysis.structuredData: at most {_MAX_FILTERS} fields"])
    return out


@router.get("/{call_id}")
async def get_call(
    call_id: str, request: Request, state: StateDep, tenant_id: TenantDep
) -> JsonObject:
    record = await state.stores.calls.get_call(tenant_id, call_id)
    if record is None:
        raise not_found("call")
    out = _call_json(record, _base_url(state, request))
    add_presigned_urls(state.settings, out, tenant_id, time.time())  # this call only, not lists
    return out


@router.post("/{call_id}/control")
async def control_call(
    call_id: str,
    request: Request,
    state: StateDep,
    tenant_id: TenantDep,
    body: Annotated[JsonObject, Body()],
) -> JsonObject:
    """Vapi's live control (control/control_commands.py) on whichever node holds the call
    (control/live_control.py). `end-call` answers with the ended call; the others once the
    call has taken the command."""
    record = await state.stores.calls.get_call(tenant_id, call_id, details=False)
    if record is None:
        raise not_found("call")  # before validating the body: no existence leak
    try:
        command = parse_command(body)
    except ValidationError as exc:
        raise ApiError(422, validation_messages(exc.errors())) from exc
    except ValueError as exc:
        raise ApiError(422, [str(exc)]) from exc
    live: LiveControl = request.app.state.live_control
    if isinstance(command, EndCallCommand):
        if record.status != "ended":
            await _end_call(state, record, live)
        ended = await state.stores.calls.get_call(tenant_id, call_id)
        assert ended is not None
        return _call_json(ended, _base_url(state, request))
    outcome = await live.send(record, command)
    if not outcome.ok:
        raise ApiError(outcome.status, outcome.message)
    return {"id": call_id, "type": command.type, "status": "sent", "message": outcome.message}


async def _end_call(state: AppState, record: CallRecord, live: LiveControl) -> None:
    """End the record (first end wins), hang up the live session wherever it runs, hang up
    Twilio's leg (from any node: also when the session's node does not answer)."""
    await state.stores.calls.finish_call(record.id, EndedReason.MANUALLY_CANCELED, END_CALL_DETAIL)
    outcome = await live.send(record, EndCallCommand(type="end-call"))
    held = outcome.ok  # a session (here or on another node) took the hang-up
    if not held and outcome.status >= 500:
        log.warning("call %s: session not hung up: %s", record.id, outcome.message)
    if not record.twilio_call_sid:
        return
    try:
        # In dev mode there is no account to ask: closing the media stream ends the call.
        await hang_up_at_twilio(
            state.settings,
            state.stores,
            tenant_id=record.tenant_id,
            phone_number_id=record.phone_number_id,
            call_sid=record.twilio_call_sid,
        )
    except TwilioRestError as exc:
        if not held:
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
