"""`GET /org` and `PATCH /org` (also at Vapi's `/org/{id}`): the caller's own tenant.

Vapi's organization object is where org-wide settings live; AVA's tenant is its org. The fields:
`id`, `name`, `createdAt` (read-only: the operator names tenants), and, an AVA extension, the
tenant's recording retention:

- `recordingRetentionDays`: days a call's recording is kept (1 to 36500), counted from the call's
  creation, then purged (control/recordings.py); `null`: the operator's default applies. The
  same setting as `ava recordings retention TENANT DAYS|default`.
- `defaultRecordingRetentionDays` (read-only): the operator's default
  (`AVA_RECORDING_RETENTION_DAYS`; `null`: kept for ever).

A key only ever sees and changes its own tenant: `/org/{id}` with any other id is 404, as for a
tenant that does not exist. Unknown or invalid fields are 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control.deps import StateDep, TenantDep
from control.errors import ApiError, not_found, validation_messages
from control.state import AppState
from storage import make_sessionmaker
from storage.recordings import MAX_RETENTION_DAYS, Recordings, RecordingStore
from storage.vapi import iso

__all__ = ["router"]

router = APIRouter(tags=["org"])


class OrgUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Absent: unchanged; null: back to the operator's default. Strict: "30", 30.5 or true are 422.
    recordingRetentionDays: int | None = Field(
        default=None, ge=1, le=MAX_RETENTION_DAYS, strict=True
    )


def _retention_store(request: Request, state: AppState) -> RecordingStore:
    recordings: Recordings | None = getattr(request.app.state, "recordings", None)
    if recordings is not None:
        return recordings.db
    return RecordingStore(make_sessionmaker(state.stores.engine))


async def _org(request: Request, state: AppState, tenant_id: str) -> dict[str, Any]:
    tenant = await state.stores.tenants.get_tenant(tenant_id)
    if tenant is None:  # deleted while its key was in flight
        raise not_found("org")
    days = await _retention_store(request, state).retention(tenant_id)
    return {
        "id": tenant.id,
        "name": tenant.name,
        "createdAt": iso(tenant.created_at),
        "recordingRetentionDays": days,
        "defaultRecordingRetentionDays": state.settings.recording_retention_days,
    }


def _parsed(body: Any) -> OrgUpdate:
    """The update, validated here rather than by FastAPI: `/org/{id}` answers another tenant's
    id with 404 whatever the body, exactly as an id that exists nowhere."""
    if not isinstance(body, dict):
        raise ApiError(422, ["body: a JSON object is required"])
    try:
        return OrgUpdate.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, validation_messages(exc.errors())) from exc


async def _update(request: Request, state: AppState, tenant_id: str, raw: Any) -> dict[str, Any]:
    body = _parsed(raw)
    if "recordingRetentionDays" in body.model_fields_set:
        store = _retention_store(request, state)
        if not await store.set_retention(tenant_id, body.recordingRetentionDays):
            raise not_found("org")
    return await _org(request, state, tenant_id)


def _own(tenant_id: str, org_id: str) -> None:
    if org_id != tenant_id:
        raise not_found("org")


@router.get("/org")
async def get_org(request: Request, state: StateDep, tenant_id: TenantDep) -> dict[str, Any]:
    return await _org(request, state, tenant_id)


@router.patch("/org")
async def update_org(
    request: Request, state: StateDep, tenant_id: TenantDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    return await _update(request, state, tenant_id, body)


@router.get("/org/{org_id}")
async def get_org_by_id(
    org_id: str, request: Request, state: StateDep, tenant_id: TenantDep
) -> dict[str, Any]:
    _own(tenant_id, org_id)
    return await _org(request, state, tenant_id)


@router.patch("/org/{org_id}")
async def update_org_by_id(
    org_id: str,
    request: Request,
    state: StateDep,
    tenant_id: TenantDep,
    body: Annotated[Any, Body()] = None,
) -> dict[str, Any]:
    _own(tenant_id, org_id)
    return await _update(request, state, tenant_id, body)
