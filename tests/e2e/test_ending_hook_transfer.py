"""A whole call whose `call.ending` hook transfers it: the silence timeout says the hook's line,
then the control app redirects the live call to `<Dial>` through the fake Twilio REST API (as
`transferCall` does, tests/e2e/test_cloud_tools.py), and the call's record says
`call.ending.hook-executed-transfer`; when Twilio refuses, the call ends as it would have. A
model that fails every request (a `pipeline-error`) transfers the caller after the apology."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fakes.openai import OpenAiFakeConfig
from benchmarks.fakes.server import REJECT_STATUS, Fault
from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from media.twilio.caller import CallScript, place_call
from media.twilio.twiml import dial
from tests.conftest import AssistantFactory, serve
from tests.e2e.test_cloud_call import KEY, SPEECH, make_app, running_fakes
from tests.e2e.test_cloud_tools import ACCOUNT, TOKEN, InboundCalls, record_of
from voice.session import APOLOGY

pytestmark = pytest.mark.timeout(90)

HUMAN, CALLER_ID = "+15551112222", "+15559990000"
LINE = "Let me put you through to the front desk."
HOOK = {
    "on": "call.ending",
    "filters": [{"type": "oneOf", "key": "call.endedReason", "oneOf": ["silence-timed-out"]}],
    "do": [
        {"type": "say", "exact": LINE},
        {
            "type": "transfer",
            "destination": {
                "type": "number", "number": HUMAN, "callerId": CALLER_ID, "message": ""
            },
        },
    ],
}  # fmt: skip


def twilio_env(twilio_url: str) -> dict[str, str]:
    """The app's settings for calls to the assistant file's number through the fake Twilio."""
    return {
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_API_BASE_URL": twilio_url,
        "unknown_numbers": "assistant-file",
    }


@pytest.mark.parametrize("fault", [None, Fault.SERVER_ERROR])
async def test_the_silence_timeout_transfers_the_caller_to_dial(
    tmp_path: Path, assistant_file: AssistantFactory, fault: Fault | None
) -> None:
    # With a fault, Twilio answers the redirect with a 5xx (every time: no retry rescues it).
    config = FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}, fault=fault, fault_paths=("/Calls/",))
    twilio = FakeTwilioRest(config, calls=InboundCalls())
    chat = OpenAiFakeConfig(api_key=KEY, reply=lambda _: "We open at nine.")
    async with (
        serve_fake(twilio.app) as twilio_url,
        running_fakes(["When do you open?"], openai=chat) as fakes,
    ):
        env = twilio_env(twilio_url)
        app = make_app(
            fakes, assistant_file, tmp_path, env=env, hooks=[HOOK], silenceTimeoutSeconds=5
        )
        async with serve(app) as base:
            # The caller says nothing after the answer: the server ends the call first.
            report = await place_call(
                base, CallScript([SPEECH], hang_up_after=30), auth_token=TOKEN, fetch_record=False
            )
            record = await record_of(app, report.call_sid)
    assert report.error is None, report.error
    attempts = [r for r in twilio.requests if r.method == "POST"]
    assert attempts
    for update in attempts:
        assert update.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{report.call_sid}.json"
        assert update.field("Twiml") == dial(HUMAN, caller_id=CALLER_ID)
    said = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert said[-1] == LINE  # the hook's line was the last thing said, before the transfer
    if fault is None:
        assert len(attempts) == 1
        assert record["ended_reason"] == "call.ending.hook-executed-transfer"
        assert record["ended_detail"] == f"transferred to {HUMAN}"
        assert record["errors"] == []
    else:  # the call ends as it would have, the refusal recorded as a failed transferCall
        assert record["ended_reason"] == "silence-timed-out"
        (error,) = record["errors"]
        assert error["stage"] == "tool" and error["name"] == "transferCall"
        assert str(REJECT_STATUS[fault]) in error["error"]


ON_FAILURE = {
    "on": "call.ending",
    "filters": [{"type": "oneOf", "key": "call.endedReason", "oneOf": ["pipeline-error"]}],
    "do": [{"type": "transfer", "destination": {"type": "number", "number": HUMAN}}],
}


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.UNAUTHORIZED])
async def test_no_model_left_transfers_the_caller_after_the_apology(
    tmp_path: Path, assistant_file: AssistantFactory, fault: Fault
) -> None:
    # Vapi's own example: the model answers 500 (or 401) every time, so the pipeline fails;
    # the caller hears the apology and the transfer's message, then is sent to a human.
    twilio = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}), calls=InboundCalls())
    chat = OpenAiFakeConfig(api_key=KEY, fault=fault)
    async with (
        serve_fake(twilio.app) as twilio_url,
        running_fakes(["When do you open?"], openai=chat) as fakes,
    ):
        env = twilio_env(twilio_url)
        app = make_app(fakes, assistant_file, tmp_path, env=env, hooks=[ON_FAILURE])
        async with serve(app) as base:
            report = await place_call(
                base, CallScript([SPEECH], hang_up_after=30), auth_token=TOKEN, fetch_record=False
            )
            record = await record_of(app, report.call_sid)
    assert report.error is None, report.error
    (update,) = [r for r in twilio.requests if r.method == "POST"]
    assert update.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{report.call_sid}.json"
    assert update.field("Twiml") == dial(HUMAN)
    said = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert said[-1] == f"{APOLOGY} Transferring the call now"
    assert record["ended_reason"] == "call.ending.hook-executed-transfer"
    assert record["ended_detail"] == f"transferred to {HUMAN}"
    assert {e["stage"] for e in record["errors"]} == {"llm"}
