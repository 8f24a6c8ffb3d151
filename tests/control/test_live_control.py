"""`POST /call/{id}/control` on a live call in this process: an outbound call placed through
(fake) Twilio, its media stream on a real websocket with a phone that plays the audio at real
time and echoes marks as Twilio does; each control type, the 422s, another tenant's 404, and a
call that has ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.control_commands import MAX_SAY_CHARS
from media.twilio.phone import PhoneLine
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.twilio_phone import answered
from voice.types import ChatMessage

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMER = "+15557654321"
NOTE = "Tell the caller the store closes early today."
ANSWER = "Just so you know, we close early today."


@dataclass
class Live:
    api: Api
    twilio: FakeTwilioRest
    engines: ScriptedEngines
    call_id: str
    sid: str
    line: PhoneLine

    @property
    def control(self) -> str:
        return f"/call/{self.call_id}/control"

    async def send(self, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        response = await self.api.a.post(self.control, json=body)
        assert response.status_code == status, response.text
        out: dict[str, Any] = response.json()
        return out


async def eventually(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Another party (the server's call loop, the phone) makes `check` true; wait for it."""
    for _ in range(round(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def live(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Live]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines([], [ANSWER], seconds_per_char=0.01)
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_api_base_url=twilio_base
        )
        async with running_api(app) as api:
            assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            body = {
                "assistantId": assistant,
                "phoneNumberId": number,
                "customer": {"number": CUSTOMER},
            }
            call = (await api.a.post("/call", json=body)).json()
            async with answered(fake, token=AUTH_TOKEN) as line:
                await eventually(lambda: call["id"] in app.state.ava.calls.live, "live")
                await eventually(lambda: line.media_received > 0, "the greeting")
                yield Live(api, fake, engines, call["id"], line.call_sid, line)


def _all_played(line: PhoneLine) -> bool:
    return line.marks_echoed == line.marks_received and line.next_due() is None


async def test_each_control_type_acts_on_the_live_call(live: Live) -> None:
    line, session = live.line, live.api.app.state.ava.calls.live[live.call_id]
    await eventually(lambda: _all_played(line), "the greeting played")

    before = line.media_received
    sent = await live.send({"type": "say", "content": "Your order has shipped."})
    assert sent["status"] == "sent" and sent["type"] == "say"
    await eventually(lambda: line.media_received > before, "the say was sent")
    said = ChatMessage("assistant", "Your order has shipped.")
    # heard whole: then (and only then) it joins the history
    await eventually(lambda: session.history.messages()[-1] == said, "the say was heard")

    # muted: the line is said (its marks come back) but none of its audio is sent
    await live.send({"type": "control", "control": "mute-assistant"})
    before, marks = line.media_received, line.marks_received
    await live.send({"type": "say", "content": "Nobody hears this."})
    await eventually(lambda: line.marks_received > marks and _all_played(line), "muted say")
    assert line.media_received == before
    await live.send({"type": "unmute-assistant"})
    await live.send({"type": "say", "content": "Back again."})
    await eventually(lambda: line.media_received > before, "unmuted say was sent")

    # add-message: into the model's context, and the assistant answers now
    await live.send({"type": "add-message", "message": {"role": "system", "content": NOTE}})
    await eventually(lambda: bool(live.engines.llm.requests), "the model was asked")
    assert live.engines.llm.requests[-1][-1] == ChatMessage("system", NOTE)
    await eventually(
        lambda: session.history.messages()[-1] == ChatMessage("assistant", ANSWER), "answered"
    )

    # transfer: the line, then Twilio is told to dial; the call ends as forwarded
    await live.send(
        {"type": "transfer", "destination": {"type": "number", "number": "+15551112222"}}
    )
    updates = live.twilio.calls[live.sid].updates
    await eventually(lambda: bool(updates), "Twilio was asked to transfer")
    assert "+15551112222</Dial>" in updates[0]["Twiml"]
    await eventually(lambda: live.call_id not in live.api.app.state.ava.calls.live, "ended")
    assert session.ended is not None and session.ended.reason == "assistant-forwarded-call"

    gone = await live.send({"type": "say", "content": "Hello?"}, status=409)
    assert "has ended" in gone["message"]
    # end-call on an ended call is still fine (it says how it ended)
    ended = await live.send({"type": "end-call"})
    assert ended["status"] == "ended"


async def test_say_with_end_call_after_spoken_ends_the_call(live: Live) -> None:
    session = live.api.app.state.ava.calls.live[live.call_id]
    await live.send({"type": "say", "content": "Goodbye now.", "endCallAfterSpoken": True})
    await eventually(lambda: session.ended is not None, "the call ended")
    assert session.ended is not None and session.ended.reason == "manually-canceled"
    assert session.history.messages()[-1] == ChatMessage("assistant", "Goodbye now.")


BAD: list[tuple[dict[str, Any], str]] = [
    ({"type": "say"}, "say.content"),
    ({"type": "say", "content": ""}, "say.content"),
    ({"type": "say", "content": "x" * (MAX_SAY_CHARS + 1)}, "say.content"),
    ({"type": "say", "content": "hi", "endCallAfterSpoke": True}, "say.endCallAfterSpoke"),
    ({"type": "say", "content": "hi", "endCallAfterSpoken": "soon"}, "say.endCallAfterSpoken"),
    ({"type": "add-message", "message": {"role": "tool", "content": "x"}}, "add-message"),
    ({"type": "add-message", "message": {"role": "user"}}, "add-message.message.content"),
    ({"type": "transfer", "destination": {"type": "number", "number": "555"}}, "transfer"),
    ({"type": "transfer", "destination": {"type": "sip", "sipUri": "sip:a@b"}}, "transfer"),
    ({"type": "control", "control": "mute-customer"}, "control.control"),
    ({"type": "control"}, "control"),
    ({"type": "mute-assistant", "control": "unmute-assistant"}, "control"),
    ({"type": "dance"}, "body"),
    ({"content": "no type"}, "body"),
]


async def test_bad_commands_are_422_naming_the_field(live: Live) -> None:
    for body, field in BAD:
        refused = await live.send(body, status=422)
        messages = refused["message"]
        assert isinstance(messages, list), messages
        assert any(m.startswith(field) for m in messages), (body, messages)
    assert live.engines.llm.requests == []
    assert live.call_id in live.api.app.state.ava.calls.live


async def test_another_tenants_key_gets_404_for_any_body(live: Live) -> None:
    for body in ({"type": "say", "content": "hijacked"}, {"type": "end-call"}, {"no": "type"}):
        response = await live.api.b.post(live.control, json=body)
        assert response.status_code == 404 and response.json()["message"] == "call not found"
    assert live.call_id in live.api.app.state.ava.calls.live
