"""Twilio's side of a call's media stream, for tests: the `<Connect><Stream>` of the TwiML a call
was given, opened on a real websocket and signed as Twilio signs it, and a phone on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import websockets
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.twilio_rest import FakeTwilioRest
from media.twilio.caller import parse_twiml
from media.twilio.phone import DEFAULT_ACCOUNT_SID, PhoneLine
from media.twilio.signature import compute_signature

__all__ = ["answered", "open_twiml_stream", "placed_stream", "play"]


@contextlib.asynccontextmanager
async def open_twiml_stream(
    twiml: str,
    call_sid: str,
    *,
    token: str | None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    start: bool = True,
) -> AsyncIterator[tuple[ClientConnection, PhoneLine]]:
    """The stream `twiml` connects the call `call_sid` to, signed with `token` (None: unsigned),
    and a phone line for it. `start`: send `connected` and `start` first, as Twilio does;
    False for a caller that opens the stream itself (`_converse`)."""
    stream = parse_twiml(twiml)
    headers: dict[str, str] = {}
    if token is not None:
        headers["X-Twilio-Signature"] = compute_signature(token, stream.url, {})
    line = PhoneLine(
        call_sid=call_sid, account_sid=account_sid, custom_parameters=stream.parameters
    )
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        if start:
            loop = asyncio.get_running_loop()
            await ws.send(line.connected(loop.time()))
            await ws.send(line.start(loop.time()))
        yield ws, line


@contextlib.asynccontextmanager
async def placed_stream(
    twilio: FakeTwilioRest, *, token: str, start: bool = True
) -> AsyncIterator[tuple[ClientConnection, PhoneLine]]:
    """The one call the server placed through `twilio`, picked up: its TwiML's stream, as
    `open_twiml_stream`."""
    (sid,) = twilio.calls
    async with open_twiml_stream(
        twilio.calls[sid].twiml or "", sid, token=token, start=start
    ) as opened:
        yield opened


async def play(ws: ClientConnection, line: PhoneLine) -> None:
    """Twilio's side of the stream: plays what it is sent, echoes each mark once the audio
    before it has played."""
    loop = asyncio.get_running_loop()

    async def echo() -> None:
        while True:
            for message in line.due_messages(loop.time()):
                await ws.send(message)
            due = line.next_due()
            await asyncio.sleep(0.02 if due is None else max(0.0, due - loop.time()))

    async with asyncio.TaskGroup() as tg:
        echoes = tg.create_task(echo())
        try:
            async for text in ws:
                assert isinstance(text, str)
                line.receive_text(text, loop.time())
        finally:
            echoes.cancel()


@contextlib.asynccontextmanager
async def answered(twilio: FakeTwilioRest, *, token: str) -> AsyncIterator[PhoneLine]:
    """The one call the server placed through `twilio`, picked up by a phone that stays silent,
    plays what it is sent and echoes marks (`play`) until the block ends."""
    async with placed_stream(twilio, token=token) as (ws, line):
        phone = asyncio.create_task(play(ws, line))
        try:
            yield line
        finally:
            phone.cancel()
            # an assertion that failed in the phone surfaces here
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await phone
