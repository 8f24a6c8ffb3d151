"""TwilioRest (the `twilio` SDK, rerouted) against the loopback fake of Twilio's REST API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import Fault, serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.twilio_rest import TwilioRest, TwilioRestError

pytestmark = pytest.mark.timeout(30)

SID = "AC" + "1" * 32
TOKEN = "token-1"
OTHER_SID = "AC" + "2" * 32
KEY_SID, KEY_SECRET = "SK" + "3" * 32, "secret-3"
NUMBER = "+15550001111"
TWIML = '<Response><Connect><Stream url="wss://ava.example/twilio/media"/></Connect></Response>'


@asynccontextmanager
async def twilio(**config: Any) -> AsyncIterator[tuple[FakeTwilioRest, str]]:
    config.setdefault("accounts", {SID: TOKEN, OTHER_SID: "token-2"})
    config.setdefault("api_keys", {KEY_SID: (SID, KEY_SECRET)})
    fake = FakeTwilioRest(FakeTwilioRestConfig(**config))
    async with serve(fake.app) as base:
        yield fake, base


async def test_create_call_sends_twilios_form_with_basic_auth() -> None:
    async with twilio() as (fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        sid = await rest.create_call(
            to="+15557654321",
            from_=NUMBER,
            twiml=TWIML,
            status_callback="https://ava.example/twilio/status",
        )
    assert sid.startswith("CA") and sid in fake.calls
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/2010-04-01/Accounts/{SID}/Calls.json")
    assert request.username == SID
    assert request.field("To") == "+15557654321" and request.field("From") == NUMBER
    assert request.field("Twiml") == TWIML and request.field("Url") is None
    assert request.field("StatusCallback") == "https://ava.example/twilio/status"
    assert request.field("StatusCallbackMethod") == "POST"
    # a list goes as repeated keys, the way Twilio reads it
    assert request.fields("StatusCallbackEvent") == [
        "initiated",
        "ringing",
        "answered",
        "completed",
    ]
    assert fake.calls[sid].status == "queued"


async def test_create_call_with_a_url_and_an_api_key() -> None:
    async with twilio() as (fake, base):
        async with TwilioRest(SID, "", base_url=base, api_key=(KEY_SID, KEY_SECRET)) as rest:
            sid = await rest.create_call(to="+15557654321", from_=NUMBER, url="https://x/voice")
    (request,) = fake.requests
    assert request.username == KEY_SID
    assert request.field("Url") == "https://x/voice" and request.field("Method") == "POST"
    assert request.field("StatusCallback") is None
    assert fake.calls[sid].url == "https://x/voice"


async def test_create_call_needs_exactly_one_of_twiml_and_url() -> None:
    rest = TwilioRest(SID, TOKEN, base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError):
        await rest.create_call(to="+1", from_="+2")
    with pytest.raises(ValueError):
        await rest.create_call(to="+1", from_="+2", twiml=TWIML, url="https://x")


async def test_update_and_end_call() -> None:
    async with twilio() as (fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        sid = await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
        await rest.update_call_twiml(sid, "<Response><Say>bye</Say><Hangup/></Response>")
        assert await rest.end_call(sid) is True
        # a call Twilio no longer knows (20404) is already over: not an error
        assert await rest.end_call("CA" + "f" * 32) is False
    call = fake.calls[sid]
    assert call.updates == [
        {"Twiml": "<Response><Say>bye</Say><Hangup/></Response>"},
        {"Status": "completed"},
    ]
    assert call.status == "completed"
    assert fake.requests[-1].path == f"/2010-04-01/Accounts/{SID}/Calls/{'CA' + 'f' * 32}.json"


async def test_configure_number_finds_it_by_e164_and_points_it_at_us() -> None:
    async with twilio() as (fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        fake.add_number(OTHER_SID, NUMBER)  # same number in another account: not ours
        mine = fake.add_number(SID, NUMBER)
        fake.add_number(SID, "+15550002222")
        sid = await rest.configure_number(
            NUMBER, "https://ava.example/twilio/voice", "https://ava.example/twilio/status"
        )
        with pytest.raises(TwilioRestError) as missing:
            await rest.configure_number("+15559999999", "https://ava.example/twilio/voice")
    assert sid == mine.sid
    assert mine.voice_url == "https://ava.example/twilio/voice" and mine.voice_method == "POST"
    assert mine.status_callback == "https://ava.example/twilio/status"
    assert fake.numbers[0].voice_url == "" and fake.numbers[2].voice_url == ""
    lookup = fake.requests[0]
    assert lookup.method == "GET" and lookup.query["PhoneNumber"] == NUMBER
    assert missing.value.status == 404 and not missing.value.retryable
    assert "+15559999999" in str(missing.value)


async def test_wrong_credentials_are_twilios_20003_not_retryable() -> None:
    async with twilio() as (fake, base), TwilioRest(SID, "wrong", base_url=base) as rest:
        with pytest.raises(TwilioRestError) as caught:
            await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
    error = caught.value
    assert (error.status, error.code, error.retryable) == (401, 20003, False)
    assert "Authenticate" in str(error)
    assert error.more_info == "https://www.twilio.com/docs/errors/20003"
    assert not fake.calls


async def test_twilio_validation_error_keeps_code_and_message() -> None:
    async with twilio() as (_fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        with pytest.raises(TwilioRestError) as caught:
            await rest.create_call(to="", from_=NUMBER, twiml=TWIML)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (400, 21201, False)
    assert "No 'To' number is specified" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [(Fault.RATE_LIMITED, 429, 20429), (Fault.SERVER_ERROR, 500, 20500)],
)
async def test_rate_limit_and_server_errors_are_retryable(
    fault: Fault, status: int, code: int
) -> None:
    async with twilio(fault=fault, fault_count=1) as (fake, base):
        async with TwilioRest(SID, TOKEN, base_url=base) as rest:
            with pytest.raises(TwilioRestError) as caught:
                await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
            assert (caught.value.status, caught.value.code) == (status, code)
            assert caught.value.retryable
            # the fault was for one request only: the retry goes through
            sid = await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
    assert list(fake.calls) == [sid]


async def test_a_stalled_twilio_is_a_retryable_timeout() -> None:
    async with twilio(fault=Fault.STALL) as (_fake, base):
        async with TwilioRest(SID, TOKEN, base_url=base, timeout=0.3) as rest:
            started = time.monotonic()
            with pytest.raises(TwilioRestError) as caught:
                await rest.end_call("CA" + "0" * 32)
    assert caught.value.retryable and caught.value.status is None
    assert "0.3s" in str(caught.value)
    assert time.monotonic() - started < 2.0


async def test_a_garbage_answer_is_not_retryable() -> None:
    async with twilio(fault=Fault.GARBAGE) as (_fake, base):
        async with TwilioRest(SID, TOKEN, base_url=base) as rest:
            with pytest.raises(TwilioRestError) as caught:
                await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
    assert not caught.value.retryable and "unreadable response" in str(caught.value)


async def test_nothing_listening_is_a_retryable_connection_error() -> None:
    async with twilio() as (_fake, base):
        pass  # the fake is gone: its port is closed
    async with TwilioRest(SID, TOKEN, base_url=base, timeout=5) as rest:
        with pytest.raises(TwilioRestError) as caught:
            await rest.end_call("CA" + "0" * 32)
    assert caught.value.retryable and caught.value.status is None


async def test_injected_latency_is_paid_once_per_request() -> None:
    async with twilio(latency=0.2) as (_fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        started = time.monotonic()
        await rest.create_call(to="+15557654321", from_=NUMBER, twiml=TWIML)
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.5


async def test_the_fake_speaks_twilios_format_to_plain_http() -> None:
    """The wire, without the SDK: form bodies in, Twilio's JSON and error JSON out."""
    async with twilio() as (_fake, base), httpx.AsyncClient(base_url=base) as http:
        url = f"/2010-04-01/Accounts/{SID}/Calls.json"
        form = {"To": "+15557654321", "From": NUMBER, "Twiml": TWIML}
        created = await http.post(url, data=form, auth=(SID, TOKEN))
        unauthenticated = await http.post(url, data=form)
        other_account = await http.post(url, data=form, auth=(OTHER_SID, "token-2"))
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "queued" and body["direction"] == "outbound-api"
    assert body["uri"] == f"/2010-04-01/Accounts/{SID}/Calls/{body['sid']}.json"
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    # valid credentials of one account do not open another's path
    assert other_account.status_code == 401


async def test_concurrent_requests_share_one_client() -> None:
    async with twilio(latency=0.1) as (fake, base), TwilioRest(SID, TOKEN, base_url=base) as rest:
        sids = await asyncio.gather(
            *(rest.create_call(to=f"+1555000{i:04d}", from_=NUMBER, twiml=TWIML) for i in range(5))
        )
    assert len(set(sids)) == 5 and set(sids) == set(fake.calls)


async def test_find_number_answers_only_for_the_accounts_own_numbers() -> None:
    async with twilio(numbers={SID: [NUMBER], OTHER_SID: ["+15550002222"]}) as (fake, base):
        async with TwilioRest(SID, TOKEN, base_url=base) as rest:
            sid = await rest.find_number(NUMBER)
            assert sid is not None and sid.startswith("PN")
            assert await rest.find_number("+15550002222") is None  # another account's
        async with TwilioRest(SID, "", base_url=base, api_key=(KEY_SID, KEY_SECRET)) as rest:
            assert await rest.find_number(NUMBER) == sid
        async with TwilioRest(SID, "wrong", base_url=base) as rest:
            with pytest.raises(TwilioRestError) as refused:
                await rest.find_number(NUMBER)
    assert refused.value.status == 401 and refused.value.code == 20003
    assert not refused.value.retryable
    assert [r.query.get("PhoneNumber") for r in fake.requests] == [
        NUMBER, "+15550002222", NUMBER, NUMBER,
    ]  # fmt: skip
