"""Assistants, tools and phone numbers: tenant isolation, validation, encrypted credentials."""

from __future__ import annotations

import pydantic
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.errors import Conflict, NotFound
from storage.resources import AssistantStore, PhoneNumberStore, ToolStore, TwilioCredentials
from storage.tenants import TenantStore
from tests.storage.conftest import database_text

AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
API_SECRET = "twilio-api-secret-fedcba9876543210"


async def test_assistants_crud_and_isolation(
    assistants: AssistantStore, tenants: TenantStore
) -> None:
    a, b = (await tenants.create_tenant("A")).id, (await tenants.create_tenant("B")).id
    created = await assistants.create(a, {"name": "Front desk", "firstMessage": "Hi!"})
    # Only what the tenant set is stored, so AVA's defaults stay live underneath.
    assert created.config == {"name": "Front desk", "firstMessage": "Hi!"}
    assert created.assistant().silence_timeout_seconds == 30
    vapi = created.to_vapi()
    assert vapi["id"] == created.id and vapi["orgId"] == a and vapi["createdAt"].endswith("Z")

    assert await assistants.get(b, created.id) is None
    assert await assistants.list(b) == []
    assert await assistants.update(b, created.id, {"name": "Hijacked"}) is None
    assert not await assistants.delete(b, created.id)

    updated = await assistants.update(a, created.id, {"name": "Reception", "id": "ignored"})
    assert updated is not None and updated.name == "Reception"
    assert updated.config["firstMessage"] == "Hi!" and "id" not in updated.config
    assert [x.id for x in await assistants.list(a)] == [created.id]

    with pytest.raises(pydantic.ValidationError):
        await assistants.create(a, {"maxDurationSeconds": 1})
    with pytest.raises(pydantic.ValidationError):
        await assistants.update(a, created.id, {"silenceTimeoutSeconds": -1})

    assert await assistants.delete(a, created.id)
    assert await assistants.get(a, created.id) is None


async def test_tools_crud_and_isolation(tools: ToolStore, tenants: TenantStore) -> None:
    a, b = (await tenants.create_tenant("A")).id, (await tenants.create_tenant("B")).id
    config = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
        "server": {"url": "https://example.com/tools"},
    }
    tool = await tools.create(a, config)
    assert tool.type == "function" and tool.to_vapi()["function"]["name"] == "get_weather"
    assert await tools.get(b, tool.id) is None and await tools.list(b) == []
    assert await tools.update(b, tool.id, {"async": True}) is None
    assert not await tools.delete(b, tool.id)
    updated = await tools.update(a, tool.id, {"async": True})
    assert updated is not None and updated.config["async"] is True
    with pytest.raises(ValueError, match="type"):
        await tools.create(a, {"function": {}})
    assert await tools.delete(a, tool.id)


async def test_phone_number_credentials_are_encrypted_at_rest(
    phone_numbers: PhoneNumberStore, tenants: TenantStore, engine: AsyncEngine, db_url: str
) -> None:
    a = (await tenants.create_tenant("A")).id
    number = await phone_numbers.create(
        a, number="+14155550123", credentials=TwilioCredentials("AC1", auth_token=AUTH_TOKEN)
    )
    other = await phone_numbers.create(
        a,
        number="+14155550124",
        credentials=TwilioCredentials("AC2", api_key="SK1", api_secret=API_SECRET),
    )
    stored = await database_text(engine, db_url)
    assert AUTH_TOKEN not in stored and API_SECRET not in stored
    assert "+14155550123" in stored  # the sanity check: the dump does contain the rows

    creds = await phone_numbers.credentials(a, number.id)
    assert creds == TwilioCredentials("AC1", auth_token=AUTH_TOKEN)
    assert AUTH_TOKEN not in repr(creds)
    assert await phone_numbers.credentials(a, other.id) == TwilioCredentials(
        "AC2", api_key="SK1", api_secret=API_SECRET
    )
    vapi = number.to_vapi()
    assert vapi["number"] == "+14155550123" and vapi["twilioAccountSid"] == "AC1"
    assert AUTH_TOKEN not in repr(vapi)


async def test_phone_numbers_isolation_and_rules(
    phone_numbers: PhoneNumberStore, assistants: AssistantStore, tenants: TenantStore
) -> None:
    a, b = (await tenants.create_tenant("A")).id, (await tenants.create_tenant("B")).id
    creds = TwilioCredentials("AC1", auth_token=AUTH_TOKEN)
    asst_a = await assistants.create(a, {"name": "A's"})
    number = await phone_numbers.create(
        a, number="+14155550123", credentials=creds, assistant_id=asst_a.id, name="main"
    )

    assert await phone_numbers.get(b, number.id) is None
    assert await phone_numbers.list(b) == []
    assert await phone_numbers.credentials(b, number.id) is None
    assert await phone_numbers.update(b, number.id, name="mine now") is None
    assert not await phone_numbers.delete(b, number.id)

    with pytest.raises(Conflict):  # a number routes to one tenant only
        await phone_numbers.create(b, number="+14155550123", credentials=creds)
    with pytest.raises(NotFound):  # B cannot point its number at A's assistant
        await phone_numbers.create(
            b, number="+14155550999", credentials=creds, assistant_id=asst_a.id
        )
    with pytest.raises(ValueError, match="E.164"):
        await phone_numbers.create(a, number="4155550123", credentials=creds)
    with pytest.raises(ValueError):
        TwilioCredentials("AC1")

    routed = await phone_numbers.route("+14155550123")
    assert routed is not None and routed.tenant_id == a and routed.assistant_id == asst_a.id
    assert await phone_numbers.route("+10000000000") is None

    renamed = await phone_numbers.update(a, number.id, name="front desk")
    assert renamed is not None and renamed.name == "front desk"
    assert renamed.assistant_id == asst_a.id  # UNSET fields are left alone

    # Deleting the assistant detaches it (ON DELETE SET NULL: foreign keys are on in SQLite).
    assert await assistants.delete(a, asst_a.id)
    detached = await phone_numbers.get(a, number.id)
    assert detached is not None and detached.assistant_id is None

    rotated = TwilioCredentials("AC1", auth_token="new-token")
    assert await phone_numbers.update(a, number.id, credentials=rotated) is not None
    assert await phone_numbers.credentials(a, number.id) == rotated
    assert [n.id for n in await phone_numbers.list(a)] == [number.id]
    assert await phone_numbers.delete(a, number.id)
