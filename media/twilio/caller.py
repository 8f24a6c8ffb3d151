"""A simulated Twilio caller: does what Twilio does for one inbound call, and measures it.

POST the voice webhook (signed when given an auth token), read the TwiML, open the media
websocket with the stream's `<Parameter>`s, send μ-law in 20 ms frames paced against an absolute
clock, echo marks when the audio before them would have finished playing (`PhoneLine`), and say
the script's utterances. Used by `ava call`, the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin
from uuid import uuid4

import httpx
import numpy as np
import websockets

from media.g711 import ulaw_silence, ulaw_to_float
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature

__all__ = [
    "CallReport",
    "CallScript",
    "CallTrace",
    "Converse",
    "TwimlStream",
    "media_stream",
    "place_call",
    "parse_twiml",
    "voiced",
]

FRAME = 160
FRAME_SECONDS = 0.02
# (media socket, the Twilio side of the stream, the script, the report to fill)
Converse = Callable[
    [websockets.ClientConnection, PhoneLine, "CallScript", "CallReport"], Awaitable[None]
]
VOICED_DBFS = -40.0  # a 20 ms frame above this is speech, not line noise or comfort silence


@functools.lru_cache(maxsize=8192)
def _voiced_frame(frame: bytes) -> bool:
    """`voiced` of a frame the script says: the same utterances are said by every call."""
    return voiced(frame)


def voiced(ulaw: bytes) -> bool:
    samples = ulaw_to_float(ulaw)
    if not len(samples):
        return False
    rms = float(np.sqrt(np.mean(samples * samples))) + 1e-9
    return 20 * float(np.log10(rms)) > VOICED_DBFS


@dataclass(frozen=True, slots=True)
class TwimlStream:
    url: str
    parameters: dict[str, str]


# Twilio's own limit on a call's chain of <Redirect>s is far higher; ours only stops a loop.
_MAX_REDIRECTS = 10


def parse_redirect(xml: str) -> str | None:
    """The URL of a `<Redirect>` verb (a node not taking calls sends Twilio on), or None."""
    redirect = ElementTree.fromstring(xml).find("./Redirect")
    if redirect is None or not (redirect.text or "").strip():
        return None
    return (redirect.text or "").strip()


def parse_twiml(xml: str) -> TwimlStream:
    root = ElementTree.fromstring(xml)
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError(f"TwiML has no <Connect><Stream url=…>: {xml[:200]}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return TwimlStream(stream.get("url", ""), params)


@dataclass(slots=True)
class CallScript:
    utterances: list[bytes]  # μ-law 8 kHz, said in order, each after the assistant's reply
    pause_before_speaking: float = 0.4  # after the assistant goes quiet
    # The last utterance starts this long after the previous reply's audio began (barge-in).
    barge_in_after: float | None = None
    # Hang up this long after the last reply began (None: when it has finished).
    hang_up_after: float | None = None
    max_seconds: float = 60.0
    reply_timeout: float = 15.0  # no reply within this: give up on the turn
    # Hold the first utterance until the greeting has been heard (at most greeting_timeout);
    # otherwise speak after 1 s of quiet. Benchmarks set it: a slow greeting must not be talked
    # over, or every later turn is measured against the wrong reply.
    await_greeting: bool = False
    greeting_timeout: float = 10.0


@dataclass(slots=True)
class TurnMeasure:
    utterance: int
    speech_end: float | None = None  # last voiced caller frame sent (seconds since start)
    reply_start: float | None = None  # first voiced assistant frame received

    @property
    def voice_to_voice(self) -> float | None:
        if self.speech_end is None or self.reply_start is None:
            return None
        return self.reply_start - self.speech_end


@dataclass(slots=True)
class CallTrace:
    """What the caller sent and heard, in seconds since the call's start (benchmark input)."""

    start_sent: float = 0.0
    voiced_sent: list[float] = field(default_factory=list)  # caller frames carrying speech
    received: list[tuple[float, bool]] = field(default_factory=list)  # (arrival, voiced)
    clears: list[float] = field(default_factory=list)
    # (start, μ-law) of what actually played at the phone, clears applied; set at hang-up
    played: list[tuple[float, bytes]] = field(default_factory=list)
    ended: float = 0.0


@dataclass(slots=True)
class CallReport:
    call_sid: str
    greeting_latency: float | None = None  # `start` sent → first voiced audio received
    turns: list[TurnMeasure] = field(default_factory=list)
    barge_in_onset: float | None = None
    clear_at: float | None = None
    clears: int = 0
    audio_received_seconds: float = 0.0
    record: dict[str, Any] | None = None
    error: str | None = None
    # The service would not take the call (every node it reached was draining, full or
    # saturated: 503 after Twilio followed its redirects); not a failure of a call it took.
    refused: str | None = None
    trace: CallTrace = field(default_factory=CallTrace)

    @property
    def barge_in_reaction(self) -> float | None:
        if self.barge_in_onset is None or self.clear_at is None:
            return None
        return self.clear_at - self.barge_in_onset

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.refused is None
            and all(t.reply_start is not None for t in self.turns)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "callSid": self.call_sid,
            "greetingLatency": self.greeting_latency,
            "turns": [
                {"utterance": t.utterance, "voiceToVoice": t.voice_to_voice} for t in self.turns
            ],
            "bargeInReaction": self.barge_in_reaction,
            "clears": self.clears,
            "error": self.error,
            "refused": self.refused,
            "record": self.record,
        }

    def render(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines = [f"call {self.call_sid}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.append(f"  greeting (start → first audio heard): {ms(self.greeting_latency)}")
        for turn in self.turns:
            lines.append(
                f"  turn {turn.utterance + 1}: voice-to-voice {ms(turn.voice_to_voice)} "
                "(last caller audio sent → first assistant audio received)"
            )
        if self.barge_in_onset is not None:
            lines.append(f"  barge-in: onset → clear {ms(self.barge_in_reaction)}")
        record = self.record or {}
        if record:
            lines.append(
                f"  ended: {record.get('ended_reason')} {record.get('ended_detail', '')}".rstrip()
            )
            lines.append("  transcript:")
            for message in record.get("messages", []):
                cut = " [interrupted]" if message.get("interrupted") else ""
                lines.append(f"    {message['role']:>4}: {message['message']}{cut}")
            for turn in record.get("turns", []):
                latency = turn.get("latency")
                if latency:
                    parts = ", ".join(f"{k} {v * 1000:.0f}" for k, v in latency.items())
                    lines.append(f"  server turn {turn['index']} (ms): {parts}")
        return "\n".join(lines)


class _Call:
    """The state of one running simulated call (single event loop, no locks needed)."""

    def __init__(self, line: PhoneLine, script: CallScript, report: CallReport) -> None:
        self.line = line
        self.script = script
        self.report = report
        self.t0 = time.monotonic()
        self.last_voiced_rx: float | None = None
        self.first_voiced_rx: float | None = None
        self._voiced_rx: list[float] = []  # increasing times of voiced audio received

    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_server_text(self, text: str) -> None:
        now = self.now()
        before = self.line.clears_received
        audio = self.line.receive_text(text, now)
        if self.line.clears_received > before:
            self.report.trace.clears.append(now)
            self.report.clears += 1
            if self.report.clear_at is None and self.report.barge_in_onset is not None:
                self.report.clear_at = now
        if audio:
            self.report.audio_received_seconds += len(audio) / 8000
            is_voiced = voiced(audio)
            self.report.trace.received.append((now, is_voiced))
            if is_voiced:
                self.last_voiced_rx = now
                self._voiced_rx.append(now)
                if self.first_voiced_rx is None:
                    self.first_voiced_rx = now

    def first_voiced_after(self, moment: float) -> float | None:
        index = bisect.bisect_right(self._voiced_rx, moment)
        return self._voiced_rx[index] if index < len(self._voiced_rx) else None

    def assistant_quiet(self, now: float) -> bool:
        recent = self.last_voiced_rx is not None and now - self.last_voiced_rx < 0.3
        return not recent and self.line.queued_seconds(now) <= 0.0


async def place_call(
    base_url: str,
    script: CallScript,
    *,
    auth_token: str | None = None,
    from_number: str = "+15551230000",
    to_number: str = "+15557654321",
    fetch_record: bool = True,
    http: httpx.AsyncClient | None = None,
    converse: Converse | None = None,
    webhook_via: str | None = None,
) -> CallReport:
    """Place one call. `http`: a client to share between calls (many concurrent callers would
    otherwise each build an SSL context). `converse`: what the caller does on the media stream
    (default: say `script`), for drivers with a script of their own (the turn-taking bench).
    `webhook_via`: the server the voice webhook reaches, signed for `base_url` as Twilio signs
    the number's configured URL (a balancer sent it to one node; the stream goes where the
    TwiML says)."""
    account_sid = "AC" + uuid4().hex
    call_sid = "CA" + uuid4().hex
    stream_sid = "MZ" + uuid4().hex
    report = CallReport(call_sid)
    base_url = base_url.rstrip("/")
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "Caller": from_number,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        webhook = f"{base_url}/twilio/voice"
        headers = {}
        if auth_token:
            headers["X-Twilio-Signature"] = compute_signature(auth_token, webhook, form)
        target = f"{webhook_via.rstrip('/')}/twilio/voice" if webhook_via else webhook
        response = await http.post(target, data=form, headers=headers)
        # Twilio follows <Redirect>: the same form POSTed to that URL, signed for it.
        for _ in range(_MAX_REDIRECTS):
            if response.status_code != 200 or (url := parse_redirect(response.text)) is None:
                break
            url = urljoin(webhook, url)
            if auth_token:
                headers["X-Twilio-Signature"] = compute_signature(auth_token, url, form)
            response = await http.post(url, data=form, headers=headers)
        if response.status_code == 503:
            report.refused = f"voice webhook answered 503: {response.text[:200]}"
            return report
        if response.status_code != 200:
            report.error = f"voice webhook answered {response.status_code}: {response.text[:200]}"
            return report
        stream = parse_twiml(response.text)
        ws_headers = {}
        if auth_token:
            ws_headers["X-Twilio-Signature"] = compute_signature(auth_token, stream.url, {})
        line = PhoneLine(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            custom_parameters=stream.parameters,
        )
        try:
            async with websockets.connect(
                stream.url, additional_headers=ws_headers, open_timeout=10
            ) as ws:
                await (converse or _converse)(ws, line, script, report)
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            report.error = f"media stream failed: {exc!r}"
        if fetch_record:
            try:
                report.record = await _fetch_record(http, base_url, call_sid)
            except (httpx.HTTPError, ValueError) as exc:
                # A loaded server may drop this request: the call's own failure, not the caller's.
                report.error = report.error or f"call record fetch failed: {exc!r}"
    return report


async def _fetch_record(http: httpx.AsyncClient, base_url: str, call_sid: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for _ in range(50):  # the server finishes its record just after the socket closes
        response = await http.get(f"{base_url}/dev/calls/{call_sid}")
        if response.status_code == 200:
            record = response.json()
            if record.get("status") == "ended":
                break
        await asyncio.sleep(0.1)
    return record


@contextlib.asynccontextmanager
async def media_stream(
    ws: websockets.ClientConnection,
    line: PhoneLine,
    on_server_text: Callable[[str], None],
    now: Callable[[], float],
) -> AsyncIterator[float]:
    """Open the stream as Twilio does (`connected`, `start`) and hand every server message to
    `on_server_text` while the body talks; yields when `start` was sent."""

    async def receive() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in ws:
                if isinstance(text, str):
                    on_server_text(text)

    async with asyncio.TaskGroup() as tg:
        receiver = tg.create_task(receive())
        await ws.send(line.connected())
        await ws.send(line.start(now()))
        try:
            yield now()
        finally:
            receiver.cancel()


async def _converse(
    ws: websockets.ClientConnection, line: PhoneLine, script: CallScript, report: CallReport
) -> None:
    call = _Call(line, script, report)
    async with media_stream(ws, line, call.on_server_text, call.now) as start_sent:
        report.trace.start_sent = start_sent
        try:
            await _speak_script(ws, call)
        except websockets.ConnectionClosed:
            pass  # the server ended the call: a valid ending for a script
        finally:
            report.trace.ended = call.now()
            report.trace.played = [
                (segment.start, segment.audio) for segment in line.played_segments(call.now())
            ]
    if call.first_voiced_rx is not None:
        report.greeting_latency = call.first_voiced_rx - start_sent


async def _speak_script(ws: websockets.ClientConnection, call: _Call) -> None:
    script, report, line = call.script, call.report, call.line
    silence = ulaw_silence(FRAME)
    frame_index = 0
    utterance_index = -1
    position = 0
    speaking = False
    waiting_since = 0.0  # when we started waiting for the current reply
    hang_up_at: float | None = None
    turn: TurnMeasure | None = None
    reply_seen = False

    async def send_frame(frame: bytes) -> None:
        nonlocal frame_index
        now = call.now()
        await ws.send(line.media(frame, now))
        for message in line.due_messages(now):
            await ws.send(message)
        frame_index += 1
        # Absolute schedule: a late wake-up is caught up, never accumulated.
        delay = frame_index * FRAME_SECONDS - call.now()
        await asyncio.sleep(max(0.0, delay))

    # Let the greeting play out first (or give up waiting for it).
    while (
        call.now() < 1.0
        or not call.assistant_quiet(call.now())
        or (script.await_greeting and call.first_voiced_rx is None)
    ):
        if call.now() > script.greeting_timeout:
            break
        await send_frame(silence)

    while call.now() < script.max_seconds:
        now = call.now()
        if speaking:
            frame = script.utterances[utterance_index][position : position + FRAME]
            position += FRAME
            if len(frame) < FRAME:
                frame += ulaw_silence(FRAME - len(frame))
            if _voiced_frame(frame):
                assert turn is not None
                turn.speech_end = now + FRAME_SECONDS
                report.trace.voiced_sent.append(now)
                if report.barge_in_onset is None and is_barge_in(script, utterance_index):
                    report.barge_in_onset = now
            if position >= len(script.utterances[utterance_index]):
                speaking = False
                waiting_since = now
                reply_seen = False
            await send_frame(frame)
            continue
        if turn is not None and turn.reply_start is None and call.last_voiced_rx is not None:
            if turn.speech_end is not None and call.last_voiced_rx > turn.speech_end:
                # first voiced assistant audio after the caller stopped
                turn.reply_start = call.first_voiced_after(turn.speech_end)
                reply_seen = True
        next_index = utterance_index + 1
        last_done = next_index >= len(script.utterances)
        if (
            turn is not None
            and turn.reply_start is None
            and now - waiting_since > script.reply_timeout
        ):
            report.error = f"no reply to utterance {turn.utterance + 1}"
            break
        if last_done and turn is None:
            pass  # nothing to say: listen until the server ends the call or time runs out
        elif last_done and turn is not None:
            if hang_up_at is None and turn.reply_start is not None:
                if script.hang_up_after is not None:
                    hang_up_at = turn.reply_start + script.hang_up_after
                elif reply_seen and call.assistant_quiet(now):
                    hang_up_at = now + 0.2
            if hang_up_at is not None and now >= hang_up_at:
                break
        elif turn is None or turn.reply_start is not None:
            ready = False
            if is_barge_in(script, next_index) and turn is not None:
                assert turn.reply_start is not None and script.barge_in_after is not None
                ready = now >= turn.reply_start + script.barge_in_after
            elif call.assistant_quiet(now):
                quiet_since = max(call.last_voiced_rx or 0.0, waiting_since)
                ready = now - quiet_since >= script.pause_before_speaking
            if ready:
                utterance_index = next_index
                position = 0
                speaking = True
                turn = TurnMeasure(utterance_index)
                report.turns.append(turn)
        await send_frame(silence)
    await ws.send(line.stop(call.now()))
    await asyncio.sleep(0.1)
    await ws.close()


def is_barge_in(script: CallScript, index: int) -> bool:
    return script.barge_in_after is not None and index == len(script.utterances) - 1 and index > 0
