"""Call control on Twilio (transfers) against the fake Twilio REST API, the `<Dial>` TwiML, and
tool ids resolved from a tenant's stored tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError
from twilio.twiml.voice_response import Dial, VoiceResponse

from benchmarks.fakes.server import Fault
from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeCall, FakeTwilioRest, FakeTwilioRestConfig
from control.call_control import TwilioCallControl, twilio_call_control
from control.providers import resolve_tools
from control.stores import Stores, open_stores
from control.twilio_rest import TwilioRest
from media.twilio.twiml import dial
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, settings_for
from voice.assistant import Assistant
from voice.errors import ConfigError
from voice.ports import CallControlError, TransferDestination

pytestmark = pytest.mark.timeout(30)

ACCOUNT, TOKEN = "AC" + "2" * 32, "rest-token"
CALL_SID = "CA" + "3" * 32


def test_dial_is_byte_identical_to_the_twilio_sdk() -> None:
    plain = VoiceResponse()
    plain.dial("+15551112222")
    assert dial("+15551112222") == str(plain)
    full = VoiceResponse()
    element = Dial(caller_id="+15550001111")
    element.number("+15551112222", send_digits="ww123")
    full.append(element)
    assert dial("+15551112222", caller_id="+15550001111", extension="123") == str(full)
    with pytest.raises(ValueError):
        dial("+1555\x00")


@asynccontextmanager
async def twilio(**config: object) -> AsyncIterator[tuple[FakeTwilioRest, TwilioCallControl]]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}, **config))  # type: ignore[arg-type]
    fake.calls[CALL_SID] = FakeCall(
        CALL_SID, ACCOUNT, "+15550001111", "+15559998888", None, None, None, [], "in-progress"
    )
    async with serve_fake(fake.app) as base:
        control = TwilioCallControl(TwilioRest(ACCOUNT, TOKEN, base_url=base), CALL_SID)
        try:
            yield fake, control
        finally:
            await control.aclose()


async def test_a_transfer_redirects_the_call_to_dial() -> None:
    async with twilio() as (fake, control):
        await control.transfer(TransferDestination("+15551112222", caller_id="+15550001111"))
    (request,) = fake.requests
    assert (request.method, request.path) == (
        "POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json",
    )  # fmt: skip
    assert request.form == [("Twiml", dial("+15551112222", caller_id="+15550001111"))]
    assert fake.calls[CALL_SID].updates == [dict(request.form)]


async def test_twilio_errors_become_call_control_errors() -> None:
    async with twilio(fault=Fault.SERVER_ERROR) as (_, control):
        with pytest.raises(CallControlError, match="500") as failed:
            await control.transfer(TransferDestination("+15551112222"))
    assert failed.value.retryable
    async with twilio() as (fake, control):
        del fake.calls[CALL_SID]  # the caller hung up meanwhile
        with pytest.raises(CallControlError, match="404") as gone:
            await control.transfer(TransferDestination("+15551112222"))
    assert not gone.value.retryable


@asynccontextmanager
async def stores_for(tmp_path: Path, assistant_file: AssistantFactory) -> AsyncIterator[Stores]:
    stores = await open_stores(settings_for(assistant_file(), tmp_path))
    try:
        yield stores
    finally:
        await stores.close()


async def test_call_control_uses_the_numbers_account_or_the_servers(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    async with stores_for(tmp_path, assistant_file) as stores:
        tenant = (await stores.tenants.create_tenant("Acme")).id
        number = await stores.phone_numbers.create(
            tenant, number="+14155550100", credentials=TwilioCredentials(ACCOUNT, TOKEN)
        )
        ids = {"call_sid": CALL_SID, "tenant_id": tenant, "phone_number_id": number.id}
        dev = settings_for(assistant_file(), tmp_path / "dev")
        tenant_control = await twilio_call_control(dev, stores, ids)
        assert tenant_control is not None and tenant_control.rest.account_sid == ACCOUNT
        await tenant_control.aclose()
        # the file assistant's calls: the server's own credentials, and none in dev mode
        assert await twilio_call_control(dev, stores, {"call_sid": CALL_SID}) is None
        server = settings_for(
            assistant_file(),
            tmp_path / "srv",
            TWILIO_ACCOUNT_SID="AC" + "9" * 32,
            TWILIO_AUTH_TOKEN="server-token",
        )
        own = await twilio_call_control(server, stores, {"call_sid": CALL_SID})
        assert own is not None and own.rest.account_sid == "AC" + "9" * 32
        await own.aclose()


async def test_tool_ids_resolve_to_the_tenants_stored_tools(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    tool = {"type": "function", "function": {"name": "lookup"}, "server": {"url": "http://t/x"}}
    async with stores_for(tmp_path, assistant_file) as stores:
        tenant = (await stores.tenants.create_tenant("Acme")).id
        other = (await stores.tenants.create_tenant("Other")).id
        stored = await stores.tools.create(tenant, tool)
        theirs = await stores.tools.create(other, tool)
        assistant = Assistant.model_validate(
            {"model": {"tools": [{"type": "endCall"}], "toolIds": [stored.id]}}
        )
        resolved = await resolve_tools(assistant, tenant, stores.tools)
        assert [t["type"] for t in resolved.model.tools] == ["endCall", "function"]
        assert resolved.model.tools[1]["function"]["name"] == "lookup"
        assert resolved.model.tool_ids == []
        # another tenant's tool id is as unknown as a made-up one
        foreign = Assistant.model_validate({"model": {"toolIds": [theirs.id]}})
        with pytest.raises(ConfigError, match="does not exist"):
            await resolve_tools(foreign, tenant, stores.tools)
        with pytest.raises(ConfigError, match="needs a tenant"):
            await resolve_tools(assistant, None, stores.tools)
        # a server URL that is not http(s) no longer gets this far: the schema refuses it
        with pytest.raises(ValidationError, match="server.url"):
            Assistant.model_validate({"server": {"url": "ftp://x"}})
