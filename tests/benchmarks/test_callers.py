"""The benchmark's caller pool: a call whose record cannot be fetched, or that the server cut
short, is that call's failure (not the caller process's), and a transcript that is not what
the caller said is counted."""

from __future__ import annotations

import httpx
import pytest
import websockets

from benchmarks.callers import misheard_turns
from media.twilio.caller import CallScript, place_call

pytestmark = pytest.mark.timeout(30)

SAID = ["What are your opening hours?", "Can I book an appointment please?"]


def test_turns_that_match_what_was_said_are_not_misheard() -> None:
    assert misheard_turns(SAID, ["What are your  opening hours?", SAID[1]]) == []


def test_merged_and_split_utterances_are_misheard() -> None:
    merged = misheard_turns(SAID * 2, [" ".join(SAID[:2]), SAID[0], SAID[1]])
    assert merged == [
        [SAID[0], " ".join(SAID[:2])],
        [SAID[1], SAID[0]],
        [SAID[0], SAID[1]],
        [SAID[1], ""],
    ]
    split = misheard_turns(SAID[:1], ["What are", "your opening hours?"])
    assert split == [[SAID[0], "What are"], ["", "your opening hours?"]]


async def test_a_failed_record_fetch_is_the_calls_error() -> None:
    async def hang_up(ws: websockets.ServerConnection) -> None:
        await ws.recv()  # `connected`
        await ws.recv()  # `start`
        await ws.close()  # the server ends the call

    async with websockets.serve(hang_up, "127.0.0.1", 0) as media:
        port = media.sockets[0].getsockname()[1]
        twiml = (
            f'<Response><Connect><Stream url="ws://127.0.0.1:{port}/media"/></Connect></Response>'
        )

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/twilio/voice":
                return httpx.Response(200, text=twiml)
            raise httpx.ReadError("connection reset", request=request)  # /dev/calls/{sid}

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            report = await place_call("http://ava.test", CallScript([b"\xff" * 160]), http=http)
    assert report.error is not None and "ReadError" in report.error
    assert report.record is None
