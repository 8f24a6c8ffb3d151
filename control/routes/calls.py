"""`/call`: the tenant's call records in Vapi's Call shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Response

from control.deps import StoresDep, TenantDep
from control.errors import ApiError, not_found
from storage import CallStatus, to_vapi
from storage.tables import CALL_STATUSES

__all__ = ["NEXT_CURSOR_HEADER", "router"]

router = APIRouter(prefix="/call", tags=["calls"])

# Vapi's list is a bare JSON array (its SDKs parse it as one), so the cursor rides in a header.
NEXT_CURSOR_HEADER = "X-Next-Cursor"

JsonObject = dict[str, Any]


def _aware(value: datetime | None) -> datetime | None:
    # A timestamp without an offset is taken as UTC, as Vapi does.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("")
async def list_calls(
    response: Response,
    stores: StoresDep,
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
        page = await stores.calls.list_calls(
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
    return [to_vapi(call) for call in page.items]


@router.get("/{call_id}")
async def get_call(call_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    record = await stores.calls.get_call(tenant_id, call_id)
    if record is None:
        raise not_found("call")
    return to_vapi(record)
