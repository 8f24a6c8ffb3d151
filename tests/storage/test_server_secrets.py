"""Webhook and tool secrets (`server.secret`, legacy `serverUrlSecret`) are encrypted at rest,
decrypted for calls, never returned by `to_vapi()`, and migration 0002 encrypts old rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.calls import CallStore
from storage.crypto import SEALED, SecretBox
from storage.engine import make_engine, make_sessionmaker
from storage.errors import DecryptionFailed
from storage.migrate import current_revision, downgrade, head_revision, upgrade
from storage.resources import AssistantStore, PhoneNumberStore, ToolStore, TwilioCredentials
from storage.tables import Base
from storage.tenants import TenantStore
from storage.vapi import to_vapi
from tests.storage.conftest import SECRET, database_text

HOOK_SECRET = "assistant-hook-secret-0123456789"
LEGACY_SECRET = "legacy-url-secret-abcdefabcdef"
INLINE_SECRET = "inline-tool-secret-9876543210"
TOOL_SECRET = "stored-tool-secret-fedcba987654"
NUMBER_SECRET = "phone-number-secret-55555555"
ALL = (HOOK_SECRET, LEGACY_SECRET, INLINE_SECRET, TOOL_SECRET, NUMBER_SECRET)


def inline_tool(secret: str) -> dict[str, object]:
    return {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object"}},
        "server": {"url": "https://tools.example.com/lookup", "secret": secret},
    }


async def test_secrets_are_sealed_in_the_database_and_open_for_calls(
    assistants: AssistantStore,
    tools: ToolStore,
    phone_numbers: PhoneNumberStore,
    tenants: TenantStore,
    engine: AsyncEngine,
    db_url: str,
) -> None:
    a = (await tenants.create_tenant("A")).id
    front = await assistants.create(
        a,
        {
            "name": "Front",
            "server": {"url": "https://hooks.example.com/a", "secret": HOOK_SECRET},
            "model": {"provider": "openai", "tools": [inline_tool(INLINE_SECRET)]},
        },
    )
    legacy = await assistants.create(
        a,
        {
            "name": "Old",
            "serverUrl": "https://hooks.example.com/b",
            "serverUrlSecret": LEGACY_SECRET,
        },
    )
    tool = await tools.create(a, inline_tool(TOOL_SECRET))
    number = await phone_numbers.create(
        a,
        number="+14155550123",
        credentials=TwilioCredentials("AC1", auth_token="token-123"),
        server={"url": "https://hooks.example.com/n", "secret": NUMBER_SECRET},
    )

    stored = await database_text(engine, db_url)
    assert "hooks.example.com" in stored and SEALED in stored  # the dump holds the rows
    assert not [s for s in ALL if s in stored]

    # what a call uses: the store opens the secrets again
    got = await assistants.get(a, front.id)
    assert got is not None
    assert got.assistant().server == {"url": "https://hooks.example.com/a", "secret": HOOK_SECRET}
    assert got.assistant().model.tools[0]["server"]["secret"] == INLINE_SECRET
    old = await assistants.get(a, legacy.id)
    assert old is not None
    assert old.assistant().server == {"url": "https://hooks.example.com/b", "secret": LEGACY_SECRET}
    got_tool = await tools.get(a, tool.id)
    assert got_tool is not None and got_tool.config["server"]["secret"] == TOOL_SECRET
    got_number = await phone_numbers.route("+14155550123")
    assert got_number is not None and got_number.server is not None
    assert got_number.server["secret"] == NUMBER_SECRET

    # what the API shows: never a secret (Vapi never returns credentials), the rest intact
    shown = [r.to_vapi() for r in await assistants.list(a)]
    shown += [r.to_vapi() for r in await tools.list(a)]
    shown += [r.to_vapi() for r in await phone_numbers.list(a)]
    dumped = json.dumps(shown)
    assert not [s for s in ALL if s in dumped] and SEALED not in dumped
    assert '"secret"' not in dumped and "serverUrlSecret" not in dumped
    assert number.to_vapi()["server"] == {"url": "https://hooks.example.com/n"}
    assert front.to_vapi()["model"]["tools"][0]["server"] == {
        "url": "https://tools.example.com/lookup"
    }


async def test_patch_keeps_the_secret_for_the_same_url_only(
    assistants: AssistantStore,
    tools: ToolStore,
    phone_numbers: PhoneNumberStore,
    tenants: TenantStore,
    engine: AsyncEngine,
    db_url: str,
) -> None:
    a = (await tenants.create_tenant("A")).id
    url = "https://hooks.example.com/a"
    record = await assistants.create(a, {"server": {"url": url, "secret": HOOK_SECRET}})
    # a client echoes back the GET (which has no secret): the secret stays
    echoed = await assistants.update(a, record.id, {"server": record.to_vapi()["server"]})
    assert echoed is not None and echoed.config["server"]["secret"] == HOOK_SECRET
    # a new URL never inherits the old secret (it would be sent to another host)
    moved = await assistants.update(a, record.id, {"server": {"url": "https://other.example"}})
    assert moved is not None and "secret" not in moved.config["server"]
    # an explicit null clears it
    again = await assistants.update(a, record.id, {"server": {"url": url, "secret": "s2-secret"}})
    assert again is not None and again.config["server"]["secret"] == "s2-secret"
    cleared = await assistants.update(a, record.id, {"server": {"url": url, "secret": None}})
    assert cleared is not None and cleared.config["server"].get("secret") is None

    tool = await tools.create(a, inline_tool(TOOL_SECRET))
    kept = await tools.update(a, tool.id, {"server": tool.to_vapi()["server"]})
    assert kept is not None and kept.config["server"]["secret"] == TOOL_SECRET

    number = await phone_numbers.create(
        a,
        number="+14155550199",
        credentials=TwilioCredentials("AC1", auth_token="token-123"),
        server={"url": url, "secret": NUMBER_SECRET},
    )
    shown = number.to_vapi()["server"]
    kept_number = await phone_numbers.update(a, number.id, server={**shown, "timeoutSeconds": 5})
    assert kept_number is not None and kept_number.server is not None
    assert kept_number.server == {"url": url, "timeoutSeconds": 5, "secret": NUMBER_SECRET}
    stored = await database_text(engine, db_url)
    assert TOOL_SECRET not in stored and NUMBER_SECRET not in stored


async def test_a_wrong_key_fails_loudly(
    assistants: AssistantStore, tenants: TenantStore, engine: AsyncEngine
) -> None:
    a = (await tenants.create_tenant("A")).id
    record = await assistants.create(a, {"server": {"url": "https://h.example", "secret": "x1"}})
    other = AssistantStore(make_sessionmaker(engine), SecretBox.from_secret("another key"))
    with pytest.raises(DecryptionFailed):
        await other.get(a, record.id)


async def _insert_plain_rows(url: str) -> tuple[str, str]:
    """Rows as revision 0001's code wrote them: secrets in plain JSON."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    config = {
        "name": "Old",
        "server": {"url": "https://hooks.example.com/a", "secret": HOOK_SECRET},
        "model": {"tools": [inline_tool(INLINE_SECRET)]},
    }
    server = {"url": "https://n.example", "secret": NUMBER_SECRET}
    # Twilio credentials were sealed from the start (with the server's key, as upgrade checks).
    credentials = SecretBox.from_secret(SECRET).encrypt_json({"account_sid": "AC1"})
    tables = Base.metadata.tables
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tables["tenants"]).values(id="t1", name="A", created_at=now)
            )
            await connection.execute(
                insert(tables["assistants"]).values(
                    id="a1", tenant_id="t1", name="Old", config=config, **stamps
                )
            )
            await connection.execute(
                insert(tables["tools"]).values(
                    id="tool1", tenant_id="t1", type="function",
                    config=inline_tool(TOOL_SECRET), **stamps,
                )
            )  # fmt: skip
            await connection.execute(
                insert(tables["phone_numbers"]).values(
                    id="p1", tenant_id="t1", number="+14155550123", provider="twilio",
                    twilio_account_sid="AC1", credentials_encrypted=credentials, server=server,
                    **stamps,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()
    return "t1", "a1"


async def test_migration_0002_encrypts_plain_secrets(empty_db_url: str) -> None:
    await upgrade(empty_db_url, "0001")
    tenant, assistant_id = await _insert_plain_rows(empty_db_url)

    # without the key there is something it cannot do: it refuses and changes nothing
    with pytest.raises(RuntimeError, match="AVA_SECRET_KEY"):
        await upgrade(empty_db_url)
    assert await current_revision(empty_db_url) == "0001"

    await upgrade(empty_db_url, secret_key=SECRET)
    assert await current_revision(empty_db_url) == head_revision()
    engine = make_engine(empty_db_url)
    try:
        stored = await database_text(engine, empty_db_url)
        assert "hooks.example.com" in stored
        assert not [s for s in ALL if s in stored]
        box = SecretBox.from_secret(SECRET)
        sessions = make_sessionmaker(engine)
        record = await AssistantStore(sessions, box).get(tenant, assistant_id)
        assert record is not None
        assert record.config["server"]["secret"] == HOOK_SECRET
        assert record.config["model"]["tools"][0]["server"]["secret"] == INLINE_SECRET
        tool = await ToolStore(sessions, box).get(tenant, "tool1")
        assert tool is not None and tool.config["server"]["secret"] == TOOL_SECRET
        number = await PhoneNumberStore(sessions, box).get(tenant, "p1")
        assert number is not None and number.server == {
            "url": "https://n.example",
            "secret": NUMBER_SECRET,
        }
    finally:
        await engine.dispose()

    # and back: downgrading to 0001 restores what 0001's code reads
    await downgrade(empty_db_url, "0001", secret_key=SECRET)
    engine = make_engine(empty_db_url)
    try:
        async with engine.connect() as connection:
            raw = (await connection.execute(text("SELECT server FROM phone_numbers"))).scalar_one()
        server = raw if isinstance(raw, dict) else json.loads(raw)
        assert server == {"url": "https://n.example", "secret": NUMBER_SECRET}
    finally:
        await engine.dispose()


async def test_migration_0002_needs_no_key_on_a_database_without_secrets(
    empty_db_url: str,
) -> None:
    await upgrade(empty_db_url)
    assert await current_revision(empty_db_url) == head_revision()


async def test_a_transient_assistants_secret_is_not_shown_with_its_call(
    calls: CallStore, tenants: TenantStore
) -> None:
    a = (await tenants.create_tenant("A")).id
    assistant = {
        "name": "Transient",
        "server": {"url": "https://hooks.example.com/t", "secret": HOOK_SECRET},
        "model": {"tools": [inline_tool(INLINE_SECRET)]},
    }
    call = await calls.create_call(a, type="outboundPhoneCall", metadata={"assistant": assistant})
    got = await calls.get_call(a, call.id)
    assert got is not None
    shown = to_vapi(got)
    assert shown["assistant"]["server"] == {"url": "https://hooks.example.com/t"}
    assert HOOK_SECRET not in json.dumps(shown) and INLINE_SECRET not in json.dumps(shown)


async def test_server_headers_are_sealed_masked_and_kept_on_an_echo(
    assistants: AssistantStore,
    tools: ToolStore,
    phone_numbers: PhoneNumberStore,
    tenants: TenantStore,
    engine: AsyncEngine,
    db_url: str,
) -> None:
    a = (await tenants.create_tenant("A")).id
    url = "https://hooks.example.com/h"
    headers = {"Authorization": "Bearer header-credential-1", "X-Api-Key": "header-credential-2"}
    server = {"url": url, "headers": headers}
    record = await assistants.create(
        a, {"server": server, "model": {"provider": "openai", "tools": [inline_tool("s1")]}}
    )
    tool = await tools.create(a, {**inline_tool(TOOL_SECRET), "server": server})
    number = await phone_numbers.create(
        a,
        number="+14155550177",
        credentials=TwilioCredentials("AC1", auth_token="token-123"),
        server=server,
    )
    stored = await database_text(engine, db_url)
    assert "X-Api-Key" in stored
    assert "header-credential" not in stored

    # calls get the values; the API shows the names only
    got = await assistants.get(a, record.id)
    assert got is not None and got.assistant().server == server
    masked = {"Authorization": "***", "X-Api-Key": "***"}
    assert record.to_vapi()["server"] == {"url": url, "headers": masked}
    assert tool.to_vapi()["server"]["headers"] == masked
    assert number.to_vapi()["server"] == {"url": url, "headers": masked}
    assert "header-credential" not in json.dumps([record.to_vapi(), number.to_vapi()])

    # a GET echoed back keeps the stored values; a changed value replaces one
    shown = record.to_vapi()["server"]
    changed = {**shown, "headers": {**shown["headers"], "X-Api-Key": "header-credential-3"}}
    echoed = await assistants.update(a, record.id, {"server": changed})
    assert echoed is not None
    assert echoed.config["server"]["headers"] == {**headers, "X-Api-Key": "header-credential-3"}
    kept_tool = await tools.update(a, tool.id, {"server": tool.to_vapi()["server"]})
    assert kept_tool is not None and kept_tool.config["server"]["headers"] == headers
    kept_number = await phone_numbers.update(a, number.id, server=number.to_vapi()["server"])
    assert kept_number is not None and kept_number.server == server
    # another URL inherits nothing, and the mask is never stored as a credential
    other = "https://other.example"
    moved = await assistants.update(a, record.id, {"server": {**shown, "url": other}})
    assert moved is not None and moved.config["server"] == {"url": other, "headers": {}}
    assert "header-credential" not in await database_text(engine, db_url)
