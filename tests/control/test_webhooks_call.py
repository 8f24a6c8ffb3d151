"""A whole phone call through the fakes (Twilio's side simulated, scripted engines) delivers
Vapi's server messages to a real receiver on 127.0.0.1, in the order they happened, signed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control.app import create_app
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.webhook_receiver import receiver, sdk_parse
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)
WANTED = [
    "status-update", "speech-update", "transcript", "conversation-update", "user-interrupted",
    "hang", "end-of-call-report",
]  # fmt: skip


def brief(message: dict[str, Any]) -> str:
    kind = message["type"]
    if kind == "speech-update":
        return f"speech-update {message['role']} {message['status']}"
    if kind == "status-update":
        return f"status-update {message['status']}"
    if kind == "transcript":
        return f"transcript {message['role']} {message['transcriptType']}"
    return str(kind)


async def test_a_phone_call_delivers_the_messages_in_order(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["Tell me about your services.", "Stop, what about the price?"],
        [LONG_REPLY, "Cleanings are eighty dollars."],
        seconds_per_char=0.03,
    )
    async with receiver() as hooks:
        path = assistant_file(server=hooks.server(), serverMessages=WANTED)
        app = create_app(settings_for(path, tmp_path), engines=engines)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
            assert report.error is None, report.error
            await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
    assert all(signed for _, signed in hooks.received)
    messages = [m for m, _ in hooks.received]
    for message in messages:  # each in the shape Vapi's SDK reads
        assert sdk_parse(message).type == message["type"]
    assert report.record is not None
    assert {m["call"]["id"] for m in messages} == {report.record["id"]}
    kinds = [brief(m) for m in messages]
    assert kinds[0] == "status-update in-progress"
    assert kinds[-2:] == ["status-update ended", "end-of-call-report"]
    assert "hang" not in kinds  # every turn was answered within 5 s
    # The assistant's speech alternates started/stopped: greeting, long reply (cut), answer.
    assistant = [k for k in kinds if k.startswith("speech-update assistant")]
    assert assistant == ["speech-update assistant started", "speech-update assistant stopped"] * 3
    user = [k for k in kinds if k.startswith("speech-update user")]
    assert user[0] == "speech-update user started" and len(user) >= 4
    # The barge-in: the caller starts, the assistant stops, the interruption is reported.
    cut = kinds.index("user-interrupted")
    assert kinds[cut - 3 : cut] == [
        "speech-update assistant stopped",
        "transcript assistant final",  # what the caller heard of it
        "conversation-update",
    ]
    assert kinds[:cut].count("speech-update assistant started") == 2
    # Each commit to the history is one conversation-update with everything so far.
    updates = [m for m in messages if m["type"] == "conversation-update"]
    assert [len(u["messages"]) for u in updates] == [1, 2, 3, 4, 5]
    assert [m["role"] for m in updates[-1]["messages"]] == ["bot", "user", "bot", "user", "bot"]
    interrupted = updates[2]["messages"][2]
    assert LONG_REPLY.startswith(interrupted["message"]) and interrupted["message"] != LONG_REPLY
    assert updates[-1]["messagesOpenAIFormatted"][0]["role"] == "system"
    finals = [m["transcript"] for m in messages if brief(m) == "transcript user final"]
    assert finals == ["Tell me about your services.", "Stop, what about the price?"]
    report_message = messages[-1]
    assert report_message["endedReason"] == "customer-ended-call"
    assert report_message["call"]["type"] == "inboundPhoneCall"
    assert report_message["call"]["phoneCallProviderId"] == report.call_sid
