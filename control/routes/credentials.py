"""`/credential`: Vapi's provider credentials (BYOK), used by the tenant's calls.

`provider` is Vapi's name ("deepgram", "openai", "11labs", "groq", "together-ai", "deepinfra",
"custom-llm"), `apiKey` the key; `name` is optional. Other fields a provider's credential has
are kept, sealed with the key, as long as they are plain values (strings up to 2 KB, numbers,
booleans; at most 20). Nothing secret is ever answered: responses carry id, orgId, provider,
name and the timestamps, as Vapi's do. A PATCH may change the key, the name or the other
fields, not the provider (a key for another provider is another credential).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from control.deps import StoresDep, TenantDep
from control.errors import ApiError, not_found
from control.providers import CREDENTIAL_PROVIDERS
from control.stores import Stores
from storage import UNSET, CredentialRecord
from storage.resources import Unset

__all__ = ["router"]

router = APIRouter(prefix="/credential", tags=["credentials"])

JsonObject = dict[str, Any]
JsonBody = Annotated[JsonObject, Body()]
Limit = Annotated[int, Query(ge=1, le=1000)]

_MAX_KEY = 4096
_MAX_NAME = 200
_MAX_FIELDS = 20
_MAX_FIELD_CHARS = 2048
# Server-owned fields a client may echo back from a GET; they are not part of the credential.
_OWNED = frozenset({"id", "orgId", "createdAt", "updatedAt"})
_KNOWN = frozenset({"provider", "apiKey", "name"})


def _provider(value: object) -> str:
    if not isinstance(value, str) or value not in CREDENTIAL_PROVIDERS:
        shown = repr(value) if isinstance(value, str) and len(value) <= 64 else "this value"
        known = ", ".join(sorted(CREDENTIAL_PROVIDERS))
        raise ApiError(422, [f"provider: {shown} is not supported (one of {known})"])
    return value


def _api_key(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_KEY:
        raise ApiError(
            422, [f"apiKey: must be a non-empty string of at most {_MAX_KEY} characters"]
        )
    return value


def _name(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > _MAX_NAME):
        raise ApiError(422, [f"name: must be a string of at most {_MAX_NAME} characters"])
    return value


def _fields(body: JsonObject) -> dict[str, Any]:
    """The provider's other fields: plain values only, so the sealed JSON stays small."""
    fields = {k: v for k, v in body.items() if k not in _KNOWN and k not in _OWNED}
    if len(fields) > _MAX_FIELDS:
        raise ApiError(422, [f"body: at most {_MAX_FIELDS} provider fields"])
    problems = [
        f"{key[:64]}: must be a string of at most {_MAX_FIELD_CHARS} characters, a number, "
        "a boolean or null"
        for key, value in fields.items()
        if len(key) > 64
        or not (
            value is None
            or isinstance(value, bool | int | float)
            or (isinstance(value, str) and len(value) <= _MAX_FIELD_CHARS)
        )
    ]
    if problems:
        raise ApiError(422, problems)
    return fields


@router.post("", status_code=201)
async def create_credential(stores: StoresDep, tenant_id: TenantDep, body: JsonBody) -> JsonObject:
    provider = _provider(body.get("provider"))
    api_key = _api_key(body.get("apiKey"))
    record = await stores.credentials.create(
        tenant_id,
        provider=provider,
        api_key=api_key,
        name=_name(body.get("name")),
        fields=_fields(body),
    )
    return record.to_vapi()


@router.get("")
async def list_credentials(
    stores: StoresDep, tenant_id: TenantDep, limit: Limit = 100
) -> list[JsonObject]:
    return [r.to_vapi() for r in await stores.credentials.list(tenant_id, limit=limit)]


@router.get("/{credential_id}")
async def get_credential(credential_id: str, stores: StoresDep, tenant_id: TenantDep) -> JsonObject:
    return (await _existing(stores, tenant_id, credential_id)).to_vapi()


@router.patch("/{credential_id}")
async def update_credential(
    credential_id: str, stores: StoresDep, tenant_id: TenantDep, body: JsonBody
) -> JsonObject:
    # Existence first: another tenant's id must be a 404 even when the body is also invalid.
    current = await _existing(stores, tenant_id, credential_id)
    if "provider" in body and _provider(body["provider"]) != current.provider:
        raise ApiError(422, ["provider: cannot be changed; create a credential for it instead"])
    fields = _fields(body)
    api_key: str | Unset = _api_key(body["apiKey"]) if "apiKey" in body else UNSET
    name: str | None | Unset = _name(body["name"]) if "name" in body else UNSET
    record = await stores.credentials.update(
        tenant_id, credential_id, api_key=api_key, name=name, fields=fields if fields else UNSET
    )
    if record is None:
        raise not_found("credential")
    return record.to_vapi()


@router.delete("/{credential_id}")
async def delete_credential(
    credential_id: str, stores: StoresDep, tenant_id: TenantDep
) -> JsonObject:
    record = await _existing(stores, tenant_id, credential_id)
    if not await stores.credentials.delete(tenant_id, credential_id):
        raise not_found("credential")
    return record.to_vapi()


async def _existing(stores: Stores, tenant_id: str, credential_id: str) -> CredentialRecord:
    record = await stores.credentials.get(tenant_id, credential_id)
    if record is None:
        raise not_found("credential")
    return record
