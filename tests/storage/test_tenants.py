"""Tenants and API keys: shown once, stored hashed, authenticated, revoked, scoped."""

from __future__ import annotations

import dataclasses
import re

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.errors import NotFound
from storage.tenants import KeyIdentity, TenantStore
from tests.storage.conftest import database_text


async def test_key_is_shown_once_and_stored_only_as_a_hash(
    tenants: TenantStore, engine: AsyncEngine, db_url: str
) -> None:
    tenant = await tenants.create_tenant("Acme")
    created = await tenants.create_api_key(tenant.id, "ci")
    assert re.fullmatch(r"ava_[0-9a-f]{12}_[A-Za-z0-9]{43}", created.plaintext)
    assert created.plaintext not in repr(created)

    secret = created.plaintext.split("_")[2]
    stored = await database_text(engine, db_url)
    assert created.key.prefix in stored  # the public part, to find the row
    assert created.plaintext not in stored and secret not in stored

    listed = await tenants.list_keys(tenant.id)
    assert [k.id for k in listed] == [created.key.id]
    assert "hash" not in {f.name for f in dataclasses.fields(listed[0])}
    assert listed[0].hint == f"ava_{created.key.prefix}_…"


async def test_authenticate(tenants: TenantStore) -> None:
    tenant = await tenants.create_tenant("Acme")
    created = await tenants.create_api_key(tenant.id)
    identity = await tenants.authenticate(created.plaintext)
    assert identity == KeyIdentity(tenant.id, created.key.id)
    tenant_id, key_id = identity  # unpacks like the (tenant_id, key_id) pair it is
    assert (tenant_id, key_id) == (tenant.id, created.key.id)

    prefix = created.key.prefix
    for wrong in (
        created.plaintext[:-1] + ("A" if created.plaintext[-1] != "A" else "B"),
        f"ava_{prefix}_",
        f"ava_{prefix}",
        "",
        "Bearer " + created.plaintext,
        created.plaintext.replace("ava_", "xyz_"),
    ):
        assert await tenants.authenticate(wrong) is None, wrong

    (listed,) = await tenants.list_keys(tenant.id)
    assert listed.last_used_at is not None


async def test_keys_are_bound_to_the_server_secret(
    tenants: TenantStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant = await tenants.create_tenant("Acme")
    created = await tenants.create_api_key(tenant.id)
    other_server = TenantStore(sessions, secret_key="a different secret")
    assert await other_server.authenticate(created.plaintext) is None


async def test_revoke_and_tenant_isolation(tenants: TenantStore) -> None:
    a, b = await tenants.create_tenant("A"), await tenants.create_tenant("B")
    key_a = await tenants.create_api_key(a.id, "a-key")
    key_b = await tenants.create_api_key(b.id, "b-key")

    assert [k.name for k in await tenants.list_keys(b.id)] == ["b-key"]
    assert not await tenants.revoke_key(b.id, key_a.key.id)  # B cannot revoke A's key
    assert await tenants.authenticate(key_a.plaintext) == (a.id, key_a.key.id)

    assert await tenants.revoke_key(a.id, key_a.key.id)
    assert not await tenants.revoke_key(a.id, key_a.key.id)
    assert await tenants.authenticate(key_a.plaintext) is None
    assert await tenants.authenticate(key_b.plaintext) == (b.id, key_b.key.id)
    (revoked,) = await tenants.list_keys(a.id)
    assert revoked.revoked_at is not None


async def test_tenants(tenants: TenantStore) -> None:
    acme = await tenants.create_tenant("Acme")
    assert await tenants.get_tenant(acme.id) == acme
    assert await tenants.get_tenant("nope") is None
    assert [t.id for t in await tenants.list_tenants()] == [acme.id]
    with pytest.raises(NotFound):
        await tenants.create_api_key("no-such-tenant")
