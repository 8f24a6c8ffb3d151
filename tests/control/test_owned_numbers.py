"""Owned numbers (issue 9, finding 6): an import proves the number is the tenant's through
Twilio's REST API (the loopback fake), a number's calls are checked with its own account's
token only, unknown numbers are the operator's setting, and the unauthenticated Twilio
endpoints answer an unsigned request alike whether or not the number exists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.twilio_routes import UNKNOWN_NUMBER_SAY
from media.twilio.caller import parse_twiml
from media.twilio.signature import compute_signature
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api

pytestmark = pytest.mark.timeout(60)

OPERATOR_TOKEN = "operator-twilio-auth-token"
ACCOUNT_A = NUMBER["twilioAccountSid"]
ACCOUNT_B, TOKEN_B = "AC" + "b" * 32, "tenant-b-twilio-auth-token"
KEY_A, KEY_SECRET_A = "SK" + "a" * 32, "tenant-a-api-secret"
NUMBER_B = "+14155550102"
NOBODYS = "+14155550199"  # in no account, imported by nobody


@dataclass
class Owned:
    api: Api
    twilio: FakeTwilioRest


@pytest.fixture
async def owned(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Owned]:
    """Production mode (the operator's Twilio token set); A's account owns NUMBER, B's NUMBER_B."""
    fake = FakeTwilioRest(
        FakeTwilioRestConfig(
            accounts={ACCOUNT_A: AUTH_TOKEN, ACCOUNT_B: TOKEN_B},
            api_keys={KEY_A: (ACCOUNT_A, KEY_SECRET_A)},
            numbers={ACCOUNT_A: [NUMBER["number"]], ACCOUNT_B: [NUMBER_B]},
        )
    )
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, ScriptedEngines([], []),
            twilio_auth_token=OPERATOR_TOKEN, twilio_api_base_url=twilio_base,
        )  # fmt: skip
        async with running_api(app) as api:
            yield Owned(api, fake)


async def post(api: Api, path: str, form: dict[str, str], token: str | None) -> httpx.Response:
    url = f"{api.base}{path}"
    headers = {} if token is None else {"X-Twilio-Signature": compute_signature(token, url, form)}
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=form, headers=headers)


def call_form(to: str, **extra: str) -> dict[str, str]:
    return {"CallSid": "CA" + "8" * 32, "From": "+15550001111", "To": to, **extra}


async def test_a_number_the_credentials_do_not_own_is_refused(owned: Owned) -> None:
    api = owned.api
    # B's real account and token, A's number: Twilio lists no such number for B's account.
    theirs = {**NUMBER, "twilioAccountSid": ACCOUNT_B, "twilioAuthToken": TOKEN_B}
    response = await api.b.post("/phone-number", json=theirs)
    assert response.status_code == 422, response.text
    assert response.json()["message"] == ["number: number not found in that Twilio account"]
    # A's account SID with a token that is not its own.
    guessed = {**NUMBER, "twilioAuthToken": "a-guess"}
    response = await api.b.post("/phone-number", json=guessed)
    assert response.status_code == 422
    assert response.json()["message"] == ["twilioAuthToken: Twilio refused these credentials"]
    assert (await api.b.get("/phone-number")).json() == []
    assert await api.stores.phone_numbers.route(NUMBER["number"]) is None
    # The lookup Twilio answered: the account's IncomingPhoneNumbers, filtered by the number.
    lookup = owned.twilio.requests[0]
    assert (lookup.method, lookup.path) == (
        "GET", f"/2010-04-01/Accounts/{ACCOUNT_B}/IncomingPhoneNumbers.json"
    )  # fmt: skip
    assert lookup.query["PhoneNumber"] == NUMBER["number"] and lookup.username == ACCOUNT_B
    # The owner's import goes through.
    assert (await api.a.post("/phone-number", json=NUMBER)).status_code == 201


async def test_an_api_key_import_needs_the_auth_token(owned: Owned) -> None:
    api = owned.api
    keyed: dict[str, Any] = {k: v for k, v in NUMBER.items() if k != "twilioAuthToken"}
    keyed |= {"twilioApiKey": KEY_A, "twilioApiSecret": KEY_SECRET_A}
    response = await api.a.post("/phone-number", json=keyed)
    assert response.status_code == 422
    (message,) = response.json()["message"]
    assert message.startswith("twilioAuthToken: required with twilioApiKey")
    assert owned.twilio.requests == [] and (await api.a.get("/phone-number")).json() == []
    # With the token too: both the token and the key must see the number.
    response = await api.a.post("/phone-number", json=keyed | {"twilioAuthToken": AUTH_TOKEN})
    assert response.status_code == 201, response.text
    assert [r.username for r in owned.twilio.requests] == [ACCOUNT_A, KEY_A]
    bad_secret = keyed | {"twilioAuthToken": TOKEN_B, "number": NUMBER_B,
                          "twilioAccountSid": ACCOUNT_B, "twilioApiSecret": "wrong"}  # fmt: skip
    response = await api.b.post("/phone-number", json=bad_secret)
    assert response.status_code == 422
    assert response.json()["message"] == ["twilioApiKey: Twilio refused these credentials"]


async def test_patching_in_another_accounts_credentials_is_refused(owned: Owned) -> None:
    api = owned.api
    number = (await api.a.post("/phone-number", json=NUMBER)).json()
    patch = {"twilioAccountSid": ACCOUNT_B, "twilioAuthToken": TOKEN_B}
    response = await api.a.patch(f"/phone-number/{number['id']}", json=patch)
    assert response.status_code == 422
    assert response.json()["message"] == ["number: number not found in that Twilio account"]
    current = await api.stores.phone_numbers.credentials(api.tenant_a, number["id"])
    assert current is not None and current.auth_token == AUTH_TOKEN


async def test_a_number_is_checked_with_its_own_accounts_token_only(owned: Owned) -> None:
    api = owned.api
    assistant_id = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    await api.a.post("/phone-number", json={**NUMBER, "assistantId": assistant_id})
    form = call_form(NUMBER["number"])
    assert (await post(api, "/twilio/voice", form, OPERATOR_TOKEN)).status_code == 403
    signed = await post(api, "/twilio/voice", form, AUTH_TOKEN)
    assert signed.status_code == 200 and parse_twiml(signed.text).parameters
    # A number stored with an API key only (imported before the token was required): nothing
    # can vouch for its calls, least of all the operator's token.
    await api.stores.phone_numbers.create(
        api.tenant_b,
        number=NUMBER_B,
        credentials=TwilioCredentials(ACCOUNT_B, api_key=KEY_A, api_secret=KEY_SECRET_A),
        assistant_id=None,
        server={"url": "https://example.com/hook"},
    )
    for token in (OPERATOR_TOKEN, TOKEN_B, None):
        voice = await post(api, "/twilio/voice", call_form(NUMBER_B), token)
        assert voice.status_code == 403
        status = await post(api, "/twilio/status", call_form(NUMBER_B, CallStatus="ringing"), token)
        assert status.status_code == 403


async def test_importing_a_number_does_not_change_what_unknown_numbers_get(
    owned: Owned, tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    api = owned.api
    # Production default: refused, before and after any import.
    before = await post(api, "/twilio/voice", call_form(NOBODYS), OPERATOR_TOKEN)
    await api.a.post("/phone-number", json=NUMBER)
    after = await post(api, "/twilio/voice", call_form(NOBODYS), OPERATOR_TOKEN)
    assert UNKNOWN_NUMBER_SAY in before.text and after.text == before.text
    # Dev mode's default: the assistant file answers, before and after an import.
    app = api_app(tmp_path / "dev", assistant_file, database_url, ScriptedEngines([], []))
    async with running_api(app) as dev:
        assert "<Stream" in (await post(dev, "/twilio/voice", call_form(NOBODYS), None)).text
        response = await dev.b.post("/phone-number", json={**NUMBER, "number": NUMBER_B})
        assert response.status_code == 201
        assert "<Stream" in (await post(dev, "/twilio/voice", call_form(NOBODYS), None)).text


async def test_unsigned_requests_are_answered_alike_for_any_number(owned: Owned) -> None:
    api = owned.api
    assistant_id = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    await api.a.post("/phone-number", json={**NUMBER, "assistantId": assistant_id})
    for path, extra in (("/twilio/voice", {}), ("/twilio/status", {"CallStatus": "ringing"})):
        for token in (None, "a-wrong-token"):
            answers = [
                await post(api, path, call_form(to, **extra), token)
                for to in (NUMBER["number"], NOBODYS)
            ]
            known, unknown = ((a.status_code, a.headers["content-type"], a.content)
                              for a in answers)  # fmt: skip
            assert known == unknown == (403, "text/plain; charset=utf-8", b"invalid signature")
