"""`ava bench turns` measures what it says: premature replies, talk-over, false barge-ins, missed
interruptions and the time until the assistant is no longer heard.

Two layers: the pure analysis on hand-made timelines (each measure, both ways), and the trial
caller for real over a media websocket against a deliberately rude bot that answers every
200 ms pause and stops for any sound, which the harness must catch doing exactly that."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmarks.fakes.server import serve, speech_like_ulaw
from benchmarks.turn_analysis import (
    check_budgets,
    llm_times,
    measure_step,
    summarize_side,
)
from benchmarks.turn_caller import TurnJob, run_turn_calls
from benchmarks.turn_script import Clip, Step, noise_burst, stt_script, trim_to_voice
from benchmarks.turns import render_turns
from media.g711 import ulaw_silence
from media.twilio.caller import voiced

pytestmark = pytest.mark.timeout(90)


def run(start: float, end: float) -> list[float]:
    return [start, end]


def received(start: float, end: float) -> list[float]:
    """Voiced audio arriving every 100 ms from `start` to `end`."""
    count = round((end - start) / 0.1)
    return [round(start + i * 0.1, 6) for i in range(count)]


# --- the analysis, on hand-made timelines ----------------------------------------------------

PAUSE_STEP = {
    "kind": "pause",
    "label": "I'd like to move my appointment to … next Tuesday afternoon.",
    "tags": {"pause": "0.7"},
    "said": [[1.0, 2.6], [3.3, 4.5]],  # a 0.7 s pause from 2.6 to 3.3
    "event": None,
}


def test_a_reply_during_the_pause_is_premature_and_talks_over_the_rest() -> None:
    measure = measure_step(
        PAUSE_STEP,
        received=received(3.1, 6.0),  # the answer starts in the pause
        clears=[],
        played=[run(3.1, 6.0)],
        llm=[2.8],
    )
    assert measure.premature and measure.talk_over and measure.llm_early
    assert measure.voice_to_voice is None


def test_a_reply_after_the_sentence_is_neither_but_speculation_is_reported() -> None:
    measure = measure_step(
        PAUSE_STEP, received=received(5.3, 8.0), clears=[], played=[run(5.3, 8.0)], llm=[2.8]
    )
    assert not measure.premature and not measure.talk_over
    assert measure.llm_early  # asked during the pause: allowed, but shown
    assert measure.voice_to_voice == pytest.approx(0.8)


def test_audio_that_arrives_in_the_pause_but_stops_before_the_caller_resumes() -> None:
    # reaches the phone during the pause (premature) but is not heard over the caller's voice
    measure = measure_step(
        PAUSE_STEP, received=[2.9, 3.0], clears=[3.1], played=[run(2.9, 3.1)], llm=[]
    )
    assert measure.premature and not measure.talk_over


def event_step(kind: str, onset: float = 5.0, length: float = 0.4) -> dict[str, Any]:
    return {
        "kind": kind,
        "label": kind,
        "tags": {},
        "said": [[1.0, 2.5]],
        "event": [onset, onset + length],
    }


ANSWER = received(3.3, 11.0)  # an 7.7 s answer from 3.3 s


@pytest.mark.parametrize("kind", ["backchannel", "noise"])
def test_a_clear_after_a_backchannel_or_noise_is_a_false_barge_in(kind: str) -> None:
    measure = measure_step(
        event_step(kind), received=ANSWER, clears=[5.23], played=[run(3.3, 5.23)], llm=[]
    )
    assert measure.false_barge_in and measure.to_clear == pytest.approx(0.23)
    assert measure.question_v2v == pytest.approx(0.8)


def test_going_quiet_without_a_clear_is_an_abandoned_reply() -> None:
    # stops sending at the onset; the 200 ms already at the phone plays out; never resumes
    measure = measure_step(
        event_step("backchannel"), received=ANSWER, clears=[], played=[run(3.3, 5.2)], llm=[]
    )
    assert measure.false_barge_in and measure.reason and "abandoned" in measure.reason


def test_a_short_hold_then_resume_is_not_a_barge_in() -> None:
    # AVA's plan: hold new audio at the onset, hear "okay", resume where it stopped
    played = [run(3.3, 5.2), run(5.55, 11.4)]
    measure = measure_step(
        event_step("backchannel"), received=ANSWER, clears=[], played=played, llm=[]
    )
    assert measure.false_barge_in is False
    assert measure.to_silent == pytest.approx(0.2)  # the hold shows: silent 200 ms after onset


def test_an_interruption_is_timed_to_silence_and_missed_when_talking_on() -> None:
    stopped = measure_step(
        event_step("interruption"),
        received=ANSWER,
        clears=[5.21],
        played=[run(3.3, 5.21), run(6.6, 9.0)],  # the answer to "stop" starts later
        llm=[5.6],
    )
    assert stopped.missed is False
    assert stopped.to_silent == pytest.approx(0.21) and stopped.to_clear == pytest.approx(0.21)
    assert stopped.llm_after_event
    talked_on = measure_step(
        event_step("interruption"), received=ANSWER, clears=[], played=[run(3.3, 11.0)], llm=[]
    )
    assert talked_on.missed and talked_on.to_clear is None


def test_an_event_when_nothing_was_playing_is_not_measured() -> None:
    measure = measure_step(
        event_step("backchannel", onset=9.0),
        received=received(3.3, 6.0),
        clears=[],
        played=[run(3.3, 6.0)],
        llm=[],
    )
    assert not measure.measured and measure.false_barge_in is None


def test_llm_requests_are_placed_on_each_calls_timeline() -> None:
    requests = [{"t": 1000.5}, {"t": 1003.0}, {"t": 1100.0}]
    assert llm_times(requests, wall_origin=1000.0, ended=50.0) == [0.5, 3.0]


def timeline(steps: list[dict[str, Any]], played: list[list[float]]) -> dict[str, Any]:
    voiced_received = sorted(t for s, e in played for t in received(s, e))
    return {
        "trial": 0,
        "wall_origin": 0.0,
        "error": None,
        "ended": 60.0,
        "steps": steps,
        "voiced_received": voiced_received,
        "clears": [],
        "played": played,
    }


def test_summary_budgets_and_table() -> None:
    steps = [
        PAUSE_STEP,  # answered at 5.3 s, 0.8 s after the sentence
        {**event_step("backchannel", 14.0), "said": [[10.0, 11.5]]},
        {**event_step("interruption", 26.0), "said": [[22.0, 23.5]]},
    ]
    played = [run(5.3, 8.0), run(12.3, 20.0), run(24.3, 26.2), run(27.5, 29.0)]
    ours = timeline(steps, played)
    side = summarize_side([ours], requests=[]).to_json()
    assert side["pausesAll"]["premature"]["n"] == 1
    assert side["backchannel"]["falseBargeIn"] == {"count": 0, "n": 1, "rate": 0.0}
    assert side["interruption"]["toNoLongerHeardMs"]["p50"] == pytest.approx(200.0)
    budgets = {b["budget"]: b for b in check_budgets(side, None)}
    assert budgets["backchannelFalseBargeIn"]["passed"] is True
    assert budgets["interruptionToNotHeardP50"]["passed"] is True
    assert budgets["noiseFalseBargeIn"]["passed"] is None  # no noise steps: no data
    assert budgets["voiceToVoiceVsPeer"]["passed"] is None  # no peer
    peer = {**side, "voiceToVoiceMs": {**side["voiceToVoiceMs"], "p50": 2000.0}}
    ratio = {b["budget"]: b for b in check_budgets(side, peer)}["voiceToVoiceVsPeer"]
    assert ratio["passed"] is True and ratio["value"] == pytest.approx(0.4)
    data = {"command": "t", "trials": 1, "sides": {"ava": side}, "budgets": list(budgets.values())}
    table = render_turns(data)
    assert "| false barge-in on noise | 0 % | no data | — |" in table
    assert "| backchannel: false barge-in | 0/1 (0 %) |" in table


# --- the script the STT fake is given --------------------------------------------------------


def test_the_stt_script_has_one_line_per_utterance_and_words_heard_in_time(
    tmp_path: Path,
) -> None:
    first = tmp_path / "a.ulaw"
    first.write_bytes(speech_like_ulaw(0.6))
    rest = tmp_path / "b.ulaw"
    rest.write_bytes(speech_like_ulaw(0.4))
    knock = tmp_path / "knock.ulaw"
    knock.write_bytes(noise_burst(0.12, level=0.5, seed=2, decay=0.03))
    steps = [
        Step("pause", "p", [Clip(str(first), "one two three"), Clip(str(rest), "four five")], 0.7),
        Step("noise", "n", [Clip(str(first), "a question")], event=Clip(str(knock), "")),
    ]
    lines, times, seconds = stt_script(steps)
    assert lines == ["one two three four five", "a question", ""]
    # voiced seconds (the fake's detector: the envelope's troughs do not count), not the clock:
    # the 0.7 s pause adds nothing, and each half's words fall inside that half
    heard = times[0]
    assert heard == sorted(heard) and len(heard) == 5
    assert 0.8 < seconds[0] <= 1.0 and heard[-1] < seconds[0]
    assert heard[2] < seconds[0] * 0.6 < heard[3]
    assert times[2] == []
    assert trim_to_voice(ulaw_silence(800) + speech_like_ulaw(0.2) + ulaw_silence(800)) == (
        speech_like_ulaw(0.2)
    )


# --- the caller against a rude bot, over a real media websocket ------------------------------

TONE = speech_like_ulaw(0.1)


class Bot:
    """Twilio-facing bot: answers every `answer_after` s pause with 3.5 s of speech sent 100 ms
    ahead; with `barge_in`, sends `clear` and stops at any caller sound while it talks."""

    def __init__(self, *, answer_after: float, barge_in: bool) -> None:
        self.answer_after = answer_after
        self.barge_in = barge_in
        self.app = Starlette(
            routes=[
                Route("/twilio/voice", self.voice, methods=["POST"]),
                WebSocketRoute("/ws", self.media),
            ]
        )

    async def voice(self, request: Request) -> PlainTextResponse:
        url = f"ws://{request.url.netloc}/ws"
        twiml = f'<Response><Connect><Stream url="{url}"/></Connect></Response>'
        return PlainTextResponse(twiml, media_type="application/xml")

    async def media(self, ws: WebSocket) -> None:
        await ws.accept()
        sid = ""
        talker: asyncio.Task[None] | None = None
        silence, heard = 0.0, False

        async def talk(seconds: float) -> None:
            for _ in range(round(seconds / 0.1)):
                payload = base64.b64encode(TONE).decode()
                await ws.send_text(
                    json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                )
                await asyncio.sleep(0.1)

        try:
            while True:
                message = json.loads(await ws.receive_text())
                if message["event"] == "start":
                    sid = message["start"]["streamSid"]
                    talker = asyncio.create_task(talk(0.4))  # greeting
                elif message["event"] == "media":
                    frame = base64.b64decode(message["media"]["payload"])
                    if voiced(frame):
                        if self.barge_in and talker is not None and not talker.done():
                            talker.cancel()
                            await ws.send_text(json.dumps({"event": "clear", "streamSid": sid}))
                        silence, heard = 0.0, True
                    elif heard:
                        silence += 0.02
                        if silence >= self.answer_after - 1e-9:
                            heard = False
                            talker = asyncio.create_task(talk(3.5))
                elif message["event"] == "stop":
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if talker is not None:
                talker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await talker


def bot_steps(tmp_path: Path) -> list[Step]:
    clips = {}
    for name, seconds in (("a", 0.8), ("b", 0.6), ("question", 0.8), ("okay", 0.3)):
        clips[name] = tmp_path / f"{name}.ulaw"
        clips[name].write_bytes(speech_like_ulaw(seconds))
    question = Clip(str(clips["question"]), "q")
    return [
        Step(
            "pause",
            "phrase … rest",
            [Clip(str(clips["a"]), "a"), Clip(str(clips["b"]), "b")],
            pause=0.5,
            tags={"pause": "0.5"},
        ),
        Step("backchannel", "okay", [question], event=Clip(str(clips["okay"]), "okay")),
        Step("interruption", "stop", [question], event=Clip(str(clips["okay"]), "stop")),
    ]


async def call_bot(bot: Bot, steps: list[Step]) -> dict[str, Any]:
    async with serve(bot.app) as base:
        job = TurnJob(base, [[asdict(s) for s in steps]], max_seconds=60)
        timelines = await run_turn_calls(job, lambda _: None)
    (call,) = timelines
    assert call.error is None and len(call.steps) == len(steps)
    pause = call.steps[0]
    assert pause.said[1][0] - pause.said[0][1] == pytest.approx(0.5, abs=0.03)
    return summarize_side([asdict(call)], requests=[]).to_json()


async def test_the_trial_caller_catches_a_bot_that_answers_pauses_and_stops_for_okay(
    tmp_path: Path,
) -> None:
    side = await call_bot(Bot(answer_after=0.2, barge_in=True), bot_steps(tmp_path))
    # it answered in the pause and was still talking when the caller went on
    assert side["pausesAll"]["premature"] == {"count": 1, "n": 1, "rate": 1.0}
    assert side["pausesAll"]["talkOver"]["count"] == 1
    # it cleared on "okay": a false barge-in, timed from the onset
    assert side["backchannel"]["falseBargeIn"]["count"] == 1
    assert 0 < side["backchannel"]["toClearMs"]["p50"] < 300
    # it stopped for "stop": not missed, no longer heard within a few frames
    assert side["interruption"]["missed"] == {"count": 0, "n": 1, "rate": 0.0}
    assert side["interruption"]["toNoLongerHeardMs"]["p50"] < 300
    # the questions were answered about 200 ms (+ a frame or two) after they ended
    assert 150 < side["voiceToVoiceMs"]["p50"] < 400


async def test_the_trial_caller_passes_a_bot_that_waits_and_catches_it_talking_on(
    tmp_path: Path,
) -> None:
    side = await call_bot(Bot(answer_after=1.0, barge_in=False), bot_steps(tmp_path))
    assert side["pausesAll"]["premature"]["count"] == 0
    assert side["pausesAll"]["talkOver"]["count"] == 0
    assert side["pauses"]["0.5"]["voiceToVoiceAfterPauseMs"]["p50"] > 900
    assert side["backchannel"]["falseBargeIn"] == {"count": 0, "n": 1, "rate": 0.0}
    # ...and talked straight through "stop"
    assert side["interruption"]["missed"] == {"count": 1, "n": 1, "rate": 1.0}
