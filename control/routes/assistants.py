"""`/assistant`: Vapi's assistant CRUD, validated by `voice.assistant.Assistant`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import ValidationError

from control.deps import StoresDep, TenantDep
from control.errors import ApiError, not_found, validation_messages
from control.providers import assistant_problems
from control.stores import Stores
from voice.assistant import Assistant

__all__ = ["router"]

router = APIRouter(prefix="/assistant", tags=["assistants"])

JsonObject = dict[str, Any]
JsonBody = Annotated[JsonObject, Body()]
Limit = Annotated[int, Query(ge=1, le=1000)]


async def _check_tool_ids(stores: Stores, tenant_id: str, config: JsonObject) -> None:
    """`model.toolIds` must name this tenant's tools (another tenant's look like none at all)."""
    model = config.get("model")
    tool_ids = model.get("toolIds") if isinstance(model, dict) else None
    if tool_ids is None:
        return
    if not isinstance(tool_ids, list) or not all(isinstance(t, str) for t in tool_ids):
        raise ApiError(422, ["model.toolIds: must be a list of tool ids"])
    missing = [t for t in tool_ids if await stores.tools.get(tenant_id, t) is None]
    if missing:
        raise ApiError(422, [f"model.toolIds: tool {t} not found" for t in missing])


async def _check_runnable(stores: Stores, tenant_id: str, config: JsonObject) -> None:
    """Providers AVA cannot run, inline keys and unknown `credentialId`s: a 422 naming the
    field now, not a call that fails at its start."""
    try:
        assistant = Assistant.model_validate(
            {k: v for k, v in config.items() if k not in ("id", "orgId", "createdAt", "updatedAt")}
        )
    except ValidationError:
        return  # the store's validation answers with every field's problem
    problems = await assistant_problems(assistant, stores, tenant_id)
    if problems:
        raise ApiError(422, problems)


def _invalid(exc: ValidationError) -> ApiError:
    return ApiError(422, validation_messages(exc.errors()))


@router.post("", status_code=201)
async def create_assistant(stores: StoresDep, tenant_id: TenantDep, body: JsonBody) -> JsonObject:
    await _check_tool_ids(stores, tenant_id, body)
    await _check_runnable(stores, tenant_id, body)
    try:
        record = await stores.assistants.create(tenant_id, body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    return record.to_vapi()


@router.get("")
async def list_assistants(
    stores: StoresDep, tenant_id: TenantDep, limit: Limit = 100
) -> list[JsonObject]:
    return [r.to_vapi() for r in await stores.assistants.list(tenant_id, limit=limit)]


@router.get("/{assistant_id}")
async def get_assistant(assistant_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    record = await stores.assistants.get(tenant_id, assistant_id)
    if record is None:
        raise not_found("assistant")
    return record.to_vapi()


@router.patch("/{assistant_id}")
async def update_assistant(
    assistant_id: str, stores: StoresDep, tenant_id: TenantDep, body: JsonBody
) -> JsonObject:
    # Existence first: another tenant's id must be a 404 even when the body is also invalid.
    if await stores.assistants.get(tenant_id, assistant_id) is None:
        raise not_found("assistant")
    await _check_tool_ids(stores, tenant_id, body)
    await _check_runnable(stores, tenant_id, body)
    try:
        record = await stores.assistants.update(tenant_id, assistant_id, body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    if record is None:
        raise not_found("assistant")
    return record.to_vapi()


@router.delete("/{assistant_id}")
async def delete_assistant(
    assistant_id: str, stores: StoresDep, tenant_id: TenantDep
) -> JsonObject:
    record = await stores.assistants.get(tenant_id, assistant_id)
    if record is None or not await stores.assistants.delete(tenant_id, assistant_id):
        raise not_found("assistant")
    return record.to_vapi()
