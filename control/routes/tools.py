"""`/tool`: tools an assistant references by `model.toolIds`, stored as Vapi's JSON."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from control.deps import StoresDep, TenantDep
from control.errors import ApiError, not_found

__all__ = ["router"]

router = APIRouter(prefix="/tool", tags=["tools"])

JsonObject = dict[str, Any]
JsonBody = Annotated[JsonObject, Body()]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("", status_code=201)
async def create_tool(stores: StoresDep, tenant_id: TenantDep, body: JsonBody) -> JsonObject:
    try:
        record = await stores.tools.create(tenant_id, body)
    except ValueError as exc:  # raised before the insert: nothing stored
        raise ApiError(422, [str(exc)]) from exc
    return record.to_vapi()


@router.get("")
async def list_tools(
    stores: StoresDep, tenant_id: TenantDep, limit: Limit = 100
) -> list[JsonObject]:
    return [r.to_vapi() for r in await stores.tools.list(tenant_id, limit=limit)]


@router.get("/{tool_id}")
async def get_tool(tool_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    record = await stores.tools.get(tenant_id, tool_id)
    if record is None:
        raise not_found("tool")
    return record.to_vapi()


@router.patch("/{tool_id}")
async def update_tool(
    tool_id: str, stores: StoresDep, tenant_id: TenantDep, body: JsonBody
) -> JsonObject:
    try:
        record = await stores.tools.update(tenant_id, tool_id, body)
    except ValueError as exc:
        # Only reached for this tenant's tool: update() looks the row up before validating,
        # and the transaction it validates in is rolled back.
        raise ApiError(422, [str(exc)]) from exc
    if record is None:
        raise not_found("tool")
    return record.to_vapi()


@router.delete("/{tool_id}")
async def delete_tool(tool_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    record = await stores.tools.get(tenant_id, tool_id)
    if record is None or not await stores.tools.delete(tenant_id, tool_id):
        raise not_found("tool")
    return record.to_vapi()
