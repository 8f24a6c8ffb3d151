"""Tenants and their API keys.

A key is shown once, at creation: `ava_<prefix>_<secret>`. The prefix is stored in clear to find
the row (and to let an admin tell keys apart); the whole key is stored only as a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.crypto import derive_subkey
from storage.errors import NotFound
from storage.tables import ApiKeyRow, TenantRow, utcnow

__all__ = ["ApiKey", "CreatedApiKey", "KeyIdentity", "Tenant", "TenantStore"]

_SCHEME = "ava"
_ALPHABET = string.ascii_letters + string.digits  # no "_", so the key splits unambiguously
_SECRET_CHARS = 43  # 43 base62 characters ≈ 256 bits
# Recording every use would turn each authenticated request into a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its hash, never its secret."""

    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def hint(self) -> str:
        return f"{_SCHEME}_{self.prefix}_…"


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    key: ApiKey
    plaintext: str  # shown to the admin once; AVA cannot recover it later

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"CreatedApiKey(key={self.key!r}, plaintext='{self.key.hint}')"


class KeyIdentity(NamedTuple):
    tenant_id: str
    key_id: str


class TenantStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, secret_key: str) -> None:
        self._sessions = sessions
        # Why HMAC-SHA256 and not scrypt/argon2: slow hashes protect low-entropy passwords from
        # guessing; these keys carry ~256 random bits, so no guess ever succeeds and a slow hash
        # would only add tens of milliseconds of CPU to every API request. Keying the HMAC with a
        # secret derived from the server key means a leaked database alone does not even let
        # anyone test a candidate key. Consequence: changing the server's secret key revokes
        # every API key.
        self._hash_key = derive_subkey(secret_key, "api-key-hash")
        self._dummy_hash = self._hash("")

    def _hash(self, plaintext: str) -> str:
        return hmac.new(self._hash_key, plaintext.encode(), hashlib.sha256).hexdigest()

    # --- tenants -------------------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        row = TenantRow(id=str(uuid.uuid4()), name=name, created_at=utcnow())
        async with self._sessions() as session, session.begin():
            session.add(row)
        return Tenant(row.id, row.name, row.created_at)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._sessions() as session:
            row = await session.get(TenantRow, tenant_id)
        return None if row is None else Tenant(row.id, row.name, row.created_at)

    async def max_calls(self, tenant_id: str) -> int | None:
        """The tenant's own limit of concurrent calls; None: the operator's default applies."""
        async with self._sessions() as session:
            limit: int | None = await session.scalar(
                select(TenantRow.max_calls).where(TenantRow.id == tenant_id)
            )
        return limit

    async def set_max_calls(self, tenant_id: str, limit: int | None) -> None:
        """Set (None: clear) the tenant's limit of concurrent calls. Raises NotFound."""
        if limit is not None and limit < 0:
            raise ValueError(f"a call limit is 0 or more, not {limit}")
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(TenantRow).where(TenantRow.id == tenant_id).values(max_calls=limit)
            )
        if not getattr(result, "rowcount", 0):
            raise NotFound(f"tenant {tenant_id} not found")

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant: for the operator's CLI, not for the tenant API."""
        async with self._sessions() as session:
            rows = await session.scalars(select(TenantRow).order_by(TenantRow.created_at))
            return [Tenant(r.id, r.name, r.created_at) for r in rows]

    # --- API keys ------------------------------------------------------------------------------

    async def create_api_key(self, tenant_id: str, name: str = "") -> CreatedApiKey:
        """A new key for `tenant_id`; the returned plaintext is the only copy there will be."""
        prefix = secrets.token_hex(6)
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))
        plaintext = f"{_SCHEME}_{prefix}_{secret}"
        row = ApiKeyRow(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            prefix=prefix,
            hash=self._hash(plaintext),
            name=name,
            created_at=utcnow(),
        )
        async with self._sessions() as session, session.begin():
            if await session.get(TenantRow, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id} not found")
            session.add(row)
        return CreatedApiKey(_key(row), plaintext)

    async def authenticate(self, plaintext: str) -> KeyIdentity | None:
        """The tenant and key behind a presented key, or None (unknown, malformed, revoked)."""
        parts = plaintext.split("_")
        prefix = parts[1] if len(parts) == 3 and parts[0] == _SCHEME else ""
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
        # Compare in constant time, against a dummy when no row matched, so the timing tells
        # nothing about how much of a guessed hash was right.
        expected = row.hash if row is not None else self._dummy_hash
        matches = hmac.compare_digest(self._hash(plaintext), expected)
        if row is None or not matches or row.revoked_at is not None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at >= _LAST_USED_RESOLUTION:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(last_used_at=now)
                )
        return KeyIdentity(row.tenant_id, row.id)

    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        """Revoke one of `tenant_id`'s keys; False if it has no such (unrevoked) key."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ApiKeyRow)
                .where(
                    ApiKeyRow.tenant_id == tenant_id,
                    ApiKeyRow.id == key_id,
                    ApiKeyRow.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
        return bool(getattr(result, "rowcount", 0))

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.tenant_id == tenant_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            )
            return [_key(r) for r in rows]


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id, row.tenant_id, row.name, row.prefix, row.created_at, row.revoked_at,
        row.last_used_at,
    )  # fmt: skip
