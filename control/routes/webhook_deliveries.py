"""`/webhook-delivery`: the tenant's webhook delivery log, and replaying a delivery.

Each row is one server message (`status-update`, `end-of-call-report`, …) to one URL: its
status (`pending`, `delivered`, `failed`), attempts so far, and the last failure as a fixed
kind or `http-<status>` — never what the receiver answered, never the target's secret or
headers. `POST /webhook-delivery/{id}/replay` sends a delivered or failed one again as a new
series of attempts (409 while it is still pending). Another tenant's delivery is a 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request, Response

from control.deps import StoresDep, TenantDep
from control.errors import ApiError, not_found
from control.routes.calls import NEXT_CURSOR_HEADER
from storage import Conflict, DeliveryStatus
from storage.deliveries import DELIVERY_STATUSES

__all__ = ["router"]

router = APIRouter(prefix="/webhook-delivery", tags=["webhook deliveries"])

JsonObject = dict[str, Any]


@router.get("")
async def list_deliveries(
    response: Response,
    stores: StoresDep,
    tenant_id: TenantDep,
    status: str | None = None,
    call_id: Annotated[str | None, Query(alias="callId", max_length=64)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> list[JsonObject]:
    """Newest first; the next (older) page's cursor is in the `X-Next-Cursor` header."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError(422, [f"status: must be one of {', '.join(DELIVERY_STATUSES)}"])
    try:
        page = await stores.deliveries.list(
            tenant_id,
            status=cast(DeliveryStatus | None, status),
            call_id=call_id,
            type=type,
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise ApiError(422, [f"cursor: {exc}"]) from exc
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return [record.to_json() for record in page.items]


@router.get("/{delivery_id}")
async def get_delivery(delivery_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    record = await stores.deliveries.get(tenant_id, delivery_id)
    if record is None:
        raise not_found("webhook delivery")
    return record.to_json()


@router.post("/{delivery_id}/replay")
async def replay_delivery(
    delivery_id: str, request: Request, stores: StoresDep, tenant_id: TenantDep
) -> JsonObject:
    try:
        record = await stores.deliveries.replay(tenant_id, delivery_id, now=datetime.now(UTC))
    except Conflict as exc:
        raise ApiError(409, f"webhook delivery {delivery_id} is still pending") from exc
    if record is None:
        raise not_found("webhook delivery")
    sender = getattr(request.app.state, "webhooks", None)
    if sender is not None:
        sender.poke()  # claimed now, not at the next poll (any process may send it)
    return record.to_json()
