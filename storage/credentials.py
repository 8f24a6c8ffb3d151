"""Tenants' provider credentials (Vapi's `/credential`): API keys for Deepgram, OpenAI, …

A credential's key and the provider's other fields are one JSON object sealed with the store's
`SecretBox`; only `provider` and `name` are stored in clear. Records (`CredentialRecord`) never
carry the secret, so nothing built from them can return it; a call's engines get the opened
values through `secrets()` only. Every method takes `tenant_id` first and filters on it: another
tenant's id behaves exactly like one that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.crypto import SecretBox
from storage.errors import DecryptionFailed
from storage.resources import UNSET, Unset
from storage.tables import CredentialRow, TenantRow, utcnow
from storage.vapi import iso

__all__ = ["CredentialRecord", "CredentialStore", "ProviderCredential"]

_MAX_LIMIT = 1000
_API_KEY = "apiKey"


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """A credential as the API shows it: never its key or other sealed fields."""

    id: str
    tenant_id: str
    provider: str
    name: str | None
    created_at: datetime
    updated_at: datetime

    def to_vapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "orgId": self.tenant_id,
            "provider": self.provider,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }
        return out if self.name is None else out | {"name": self.name}


@dataclass(frozen=True, slots=True)
class ProviderCredential:
    """An opened credential, for building one call's adapters. Secrets stay out of repr."""

    id: str
    provider: str
    api_key: str = field(repr=False)
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)


class CredentialStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box

    async def create(
        self,
        tenant_id: str,
        *,
        provider: str,
        api_key: str,
        name: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> CredentialRecord:
        row = CredentialRow(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            provider=provider,
            name=name,
            secret_encrypted=self._seal(api_key, fields or {}),
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return _record(row)

    async def get(self, tenant_id: str, credential_id: str) -> CredentialRecord | None:
        async with self._sessions() as session:
            row = await _row(session, tenant_id, credential_id)
        return None if row is None else _record(row)

    async def list(self, tenant_id: str, *, limit: int = 100) -> list[CredentialRecord]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(CredentialRow)
                .where(CredentialRow.tenant_id == tenant_id)
                .order_by(CredentialRow.created_at.desc(), CredentialRow.id.desc())
                .limit(max(1, min(limit, _MAX_LIMIT)))
            )
            return [_record(r) for r in rows]

    async def update(
        self,
        tenant_id: str,
        credential_id: str,
        *,
        api_key: str | Unset = UNSET,
        name: str | None | Unset = UNSET,
        fields: Mapping[str, Any] | Unset = UNSET,
    ) -> CredentialRecord | None:
        """Vapi's PATCH: a given `api_key` or `fields` replaces the stored one; the other is
        kept (so renaming a credential does not need its key again)."""
        async with self._sessions() as session, session.begin():
            row = await _row(session, tenant_id, credential_id)
            if row is None:
                return None
            if not isinstance(api_key, Unset) or not isinstance(fields, Unset):
                current = self._open(row)
                row.secret_encrypted = self._seal(
                    current.api_key if isinstance(api_key, Unset) else api_key,
                    current.fields if isinstance(fields, Unset) else fields,
                )
            if not isinstance(name, Unset):
                row.name = name
            row.updated_at = utcnow()
        return _record(row)

    async def delete(self, tenant_id: str, credential_id: str) -> bool:
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                delete(CredentialRow).where(
                    CredentialRow.tenant_id == tenant_id, CredentialRow.id == credential_id
                )
            )
        return bool(getattr(result, "rowcount", 0))

    async def secrets(self, tenant_id: str) -> Sequence[ProviderCredential]:
        """Every credential of the tenant, opened, newest first (a provider's newest wins).
        Raises DecryptionFailed when the server's key is not the one they were sealed with."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(CredentialRow)
                .where(CredentialRow.tenant_id == tenant_id)
                .order_by(CredentialRow.created_at.desc(), CredentialRow.id.desc())
            )
            return [self._open(r) for r in rows]

    async def several_tenants(self) -> bool:
        """Whether the server has more than one tenant: the default of whether tenants may use
        the operator's provider keys. Asked at each call's start, so a second tenant changes
        it at once."""
        async with self._sessions() as session:
            ids = await session.scalars(select(TenantRow.id).limit(2))
            return len(list(ids)) > 1

    def _seal(self, api_key: str, fields: Mapping[str, Any]) -> str:
        return self._box.encrypt_json({**fields, _API_KEY: api_key})

    def _open(self, row: CredentialRow) -> ProviderCredential:
        values = self._box.decrypt_json(row.secret_encrypted)
        api_key = values.pop(_API_KEY, None)
        if not isinstance(api_key, str):
            raise DecryptionFailed(f"credential {row.id} has no apiKey")
        return ProviderCredential(row.id, row.provider, api_key, values)


async def _row(session: AsyncSession, tenant_id: str, credential_id: str) -> CredentialRow | None:
    return await session.scalar(
        select(CredentialRow).where(
            CredentialRow.tenant_id == tenant_id, CredentialRow.id == credential_id
        )
    )


def _record(row: CredentialRow) -> CredentialRecord:
    return CredentialRecord(
        row.id, row.tenant_id, row.provider, row.name, row.created_at, row.updated_at
    )
