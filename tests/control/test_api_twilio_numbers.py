"""Twilio webhooks for imported numbers: routed by the dialled number, signed with its token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.twilio_routes import NO_ASSISTANT_SAY, UNKNOWN_NUMBER_SAY
from media.twilio.caller import CallScript, parse_twiml, place_call
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.twilio_phone import open_twiml_stream
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)

CALL_SID = "CA" + "7" * 32


def _form(to: str = NUMBER["number"]) -> dict[str, str]:
    return {"CallSid": CALL_SID, "From": "+15550001111", "To": to, "AccountSid": "AC" + "a" * 32}


async def _number(api: Api, *, with_assistant: bool = True) -> dict[str, str]:
    body = dict(NUMBER)
    if with_assistant:
        body["assistantId"] = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    response = await api.a.post("/phone-number", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _post(api: Api, form: dict[str, str], token: str | None) -> httpx.Response:
    url = f"{api.base}/twilio/voice"
    headers = {} if token is None else {"X-Twilio-Signature": compute_signature(token, url, form)}
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=form, headers=headers)


async def test_webhook_signed_with_the_numbers_token(api: Api) -> None:
    number = await _number(api)
    unsigned = await _post(api, _form(), None)
    assert unsigned.status_code == 403
    wrong = await _post(api, _form(), "some-other-token")
    assert wrong.status_code == 403
    tampered_form = _form()
    url = f"{api.base}/twilio/voice"
    signature = compute_signature(AUTH_TOKEN, url, tampered_form)
    tampered_form["From"] = "+15559999999"
    async with httpx.AsyncClient() as http:
        tampered = await http.post(
            url, data=tampered_form, headers={"X-Twilio-Signature": signature}
        )
    assert tampered.status_code == 403
    assert app_calls(api) == 0 and (await api.a.get("/call")).json() == []

    signed = await _post(api, _form(), AUTH_TOKEN)
    assert signed.status_code == 200 and signed.headers["content-type"].startswith("text/xml")
    stream = parse_twiml(signed.text)
    assert stream.url.endswith("/twilio/media") and set(stream.parameters) == {"ava_token"}
    assert number["id"]  # the token's claims carry it; the call test shows where it ends up


def app_calls(api: Api) -> int:
    return len(api.app.state.calls.records)


async def test_unknown_number_gets_spoken_twiml(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, unknown_numbers="reject")
    async with running_api(app) as api:
        await _number(api)
        response = await _post(api, _form(to="+14155550111"), None)
    assert response.status_code == 200
    assert UNKNOWN_NUMBER_SAY in response.text and "<Hangup" in response.text
    assert "<Stream" not in response.text


async def test_number_without_assistant_is_told_so(api: Api) -> None:
    await _number(api, with_assistant=False)
    assert (await _post(api, _form(), None)).status_code == 403
    response = await _post(api, _form(), AUTH_TOKEN)
    assert response.status_code == 200
    assert NO_ASSISTANT_SAY in response.text and "<Stream" not in response.text


async def test_media_stream_must_be_signed_with_the_numbers_token(api: Api) -> None:
    await _number(api)
    signed = await _post(api, _form(), AUTH_TOKEN)
    for token in (None, "some-other-token"):
        async with open_twiml_stream(signed.text, CALL_SID, token=token) as (ws, _):
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
    assert api.app.state.calls.live == {}


async def test_deleted_assistant_ends_the_stream_with_a_server_error(api: Api) -> None:
    number = await _number(api)
    signed = await _post(api, _form(), AUTH_TOKEN)
    assert (await api.a.delete(f"/assistant/{number['assistantId']}")).status_code == 200
    async with open_twiml_stream(signed.text, CALL_SID, token=AUTH_TOKEN) as (ws, _):
        await asyncio.wait_for(ws.wait_closed(), 5)
    record = api.app.state.calls.find(CALL_SID)
    assert record is not None
    assert record.ended_reason == "call.in-progress.error-server"
    assert "no longer exists" in record.ended_detail


async def test_server_token_and_tenant_numbers_coexist(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    """With the operator's TWILIO_AUTH_TOKEN set, a tenant's number still checks its own."""
    engines = ScriptedEngines(["Hello?"], ["Hi there."], seconds_per_char=0.01)
    # Outside dev mode an import is checked with Twilio: the fake's account owns the number.
    account = NUMBER["twilioAccountSid"]
    fake = FakeTwilioRest(
        FakeTwilioRestConfig(accounts={account: AUTH_TOKEN}, numbers={account: [NUMBER["number"]]})
    )
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_auth_token="operator-token",
            twilio_api_base_url=twilio_base,
        )  # fmt: skip
        async with running_api(app) as api:
            await _number(api)
            assert (await _post(api, _form(), "operator-token")).status_code == 403
            report = await place_call(
                api.base,
                CallScript([SPEECH]),
                auth_token=AUTH_TOKEN,
                to_number=NUMBER["number"],
                fetch_record=False,
            )
            assert report.error is None, report.error
            calls = (await api.a.get("/call")).json()
            assert len(calls) == 1 and calls[0]["orgId"] == api.tenant_a


async def test_status_callbacks_are_signed_deduplicated_and_ordered(api: Api) -> None:
    number = await _number(api)
    call = await api.stores.calls.create_call(
        api.tenant_a,
        type="inboundPhoneCall",
        twilio_call_sid=CALL_SID,
        phone_number_id=number["id"],
    )
    url = f"{api.base}/twilio/status"

    async def post(status: str, sequence: int, token: str | None) -> int:
        form = {**_form(), "CallStatus": status, "SequenceNumber": str(sequence)}
        headers = {} if token is None else {
            "X-Twilio-Signature": compute_signature(token, url, form)
        }  # fmt: skip
        async with httpx.AsyncClient() as http:
            return (await http.post(url, data=form, headers=headers)).status_code

    assert await post("ringing", 0, None) == 403
    assert await post("ringing", 0, "some-other-token") == 403
    assert await post("completed", 2, AUTH_TOKEN) == 204
    assert await post("in-progress", 1, AUTH_TOKEN) == 204
    assert await post("completed", 2, AUTH_TOKEN) == 204  # Twilio's retry
    record = await api.stores.calls.get_call(api.tenant_a, call.id)
    assert record is not None
    events = sorted(
        (e.sequence, e.data["callStatus"]) for e in record.events if e.kind == "twilio-status"
    )
    assert events == [(1, "in-progress"), (2, "completed")]
