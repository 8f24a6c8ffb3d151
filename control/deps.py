"""Annotated dependencies of the API routes: the app state, its stores, the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from control.errors import ApiError
from control.logs import TENANT_ID
from control.middleware import check_rate_limit
from control.state import AppState
from control.stores import Stores

__all__ = ["StateDep", "StoresDep", "TenantDep", "current_tenant"]


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.ava
    return state


def _stores(request: Request) -> Stores:
    return _state(request).stores


StateDep = Annotated[AppState, Depends(_state)]
StoresDep = Annotated[Stores, Depends(_stores)]


async def current_tenant(request: Request, stores: StoresDep) -> str:
    """The tenant of the `Authorization: Bearer` key; 401 for a missing, unknown or revoked one."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`")
    identity = await stores.tenants.authenticate(key.strip())
    if identity is None:
        raise ApiError(401, "invalid or revoked API key")
    TENANT_ID.set(identity.tenant_id)  # for the request's log lines; reset by RequestContext
    await check_rate_limit(request, identity.key_id)
    return identity.tenant_id


TenantDep = Annotated[str, Depends(current_tenant)]
