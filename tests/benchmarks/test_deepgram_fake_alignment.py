"""The Deepgram fake's script follows the caller's audio over a long call, as a real Deepgram
transcribes what was said: each utterance (speech after a long silence) gets its own line and
all of it, whatever dips, pauses and Finalize requests it holds; two utterances are never merged
and one is never given words of another (the capacity benchmark's third-round drift)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import websockets

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.server import serve, ws_url
from benchmarks.providers import spoken_seconds
from media.g711 import pcm16_to_ulaw, ulaw_silence

pytestmark = pytest.mark.timeout(60)

KEY = "k"
LINES = ["one two three", "four five six seven", "eight nine ten eleven twelve"]
FINALIZE = "finalize"
BATCH = 320  # 40 ms of μ-law per message, as AVA's Deepgram adapter sends it


def speech(seconds: float) -> bytes:
    """A steady voiced tone: every 20 ms frame of it is speech to the fake's energy detector."""
    t = np.arange(int(round(seconds * 8000))) / 8000
    return pcm16_to_ulaw((0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes())


def silence(seconds: float) -> bytes:
    return ulaw_silence(int(round(seconds * 8000)))


@dataclass
class Call:
    """A caller's audio, Finalize requests where AVA would send them, and each utterance's
    span on the audio timeline (seconds)."""

    pieces: list[bytes | str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)
    seconds: float = 0.0

    def say(self, *parts: bytes, finalize_after: float | None = 0.2, then: float = 1.0) -> None:
        """One utterance (`parts`: speech and the silences inside it), then `then` of silence
        with a Finalize `finalize_after` into it (None: none)."""
        start = self.seconds
        for part in parts:
            self.pieces.append(part)
            self.seconds += len(part) / 8000
        self.spans.append((start, self.seconds))
        if finalize_after is not None:
            self.pieces += [silence(finalize_after), FINALIZE]
            self.seconds += finalize_after
            then -= finalize_after
        self.pieces.append(silence(then))
        self.seconds += then


async def transcribe(config: DeepgramFakeConfig, call: Call) -> list[dict[str, Any]]:
    """Every message the fake sent for `call` (sent faster than real time), in order."""
    got: list[dict[str, Any]] = []
    params = "encoding=mulaw&sample_rate=8000&interim_results=true&endpointing=10"
    async with serve(DeepgramFake(config).app) as base:
        headers = {"Authorization": f"Token {KEY}"}
        url = f"{ws_url(base)}/v1/listen?{params}"
        async with websockets.connect(url, additional_headers=headers) as ws:

            async def receive() -> None:
                async for message in ws:
                    got.append(json.loads(message))

            reader = asyncio.create_task(receive())
            for piece in call.pieces:
                if isinstance(piece, str):
                    await ws.send(json.dumps({"type": "Finalize"}))
                    continue
                for i in range(0, len(piece), BATCH):
                    await ws.send(piece[i : i + BATCH])
                    await asyncio.sleep(0)
            await asyncio.sleep(0.3)  # the fake's final_delay is wall-clock
            await ws.send(json.dumps({"type": "CloseStream"}))
            await reader
    return got


def text(result: dict[str, Any]) -> str:
    return str(result["channel"]["alternatives"][0]["transcript"])


def finals_by_utterance(messages: list[dict[str, Any]], call: Call) -> list[list[str]]:
    """The non-empty finals' transcripts, grouped by the utterance whose audio they cover."""
    grouped: list[list[str]] = [[] for _ in call.spans]
    for m in messages:
        if m.get("type") != "Results" or not m["is_final"] or not text(m):
            continue
        middle = m["start"] + m["duration"] / 2
        owners = [i for i, (a, b) in enumerate(call.spans) if a - 0.05 <= middle <= b + 0.05]
        assert len(owners) == 1, (m["start"], m["duration"], text(m))
        grouped[owners[0]].append(text(m))
    return grouped


def config_for(utterance: list[bytes], **extra: Any) -> DeepgramFakeConfig:
    """The benchmark's setup: a script per connection, utterances apart by 0.5 s of silence,
    and each line's spoken length measured from its audio."""
    seconds = spoken_seconds(b"".join(utterance))
    return DeepgramFakeConfig(
        api_key=KEY,
        script=LINES,
        final_delay=0.02,
        script_per_connection=True,
        utterance_gap=0.5,
        script_seconds=[seconds] * len(LINES),
        **extra,
    )


@pytest.mark.parametrize("dip_seconds", [0.1, 0.0])
async def test_a_last_syllable_after_a_dip_is_not_given_the_next_line(dip_seconds: float) -> None:
    # The whole line is finalised at the dip (within 0.1 s of the line's spoken length); the
    # syllable after it used to take the next line as well, and every later utterance was one
    # line behind. Either guard suffices: bridging the dip, or a cursor that moves with the
    # utterances (dip_seconds=0 ends a segment at every dip).
    utterance = [speech(1.0), silence(0.04), speech(0.04)]
    call = Call()
    for _ in range(4):
        call.say(*utterance, finalize_after=None)
    messages = await transcribe(config_for(utterance, dip_seconds=dip_seconds), call)
    heard = [" ".join(texts) for texts in finals_by_utterance(messages, call)]
    assert heard == [*LINES, LINES[0]]


async def test_a_finalize_before_the_first_word_does_not_lose_the_utterance() -> None:
    # AVA's Finalize (its VAD's silence) can reach the fake just after the caller starts again:
    # the fake used to answer with no words and never transcribe the rest of that speech, so
    # the next utterance was given this one's line.
    call = Call()
    call.pieces += [speech(0.06), FINALIZE]
    call.seconds += 0.06
    call.say(speech(0.84))
    call.spans[0] = (0.0, call.spans[0][1])
    call.say(speech(0.9))
    messages = await transcribe(config_for([speech(0.9)]), call)
    heard = [" ".join(texts) for texts in finals_by_utterance(messages, call)]
    assert heard == LINES[:2]


async def test_a_long_call_keeps_every_utterance_on_its_own_line() -> None:
    # Three rounds of three questions with dips between syllables (< 0.1 s), pauses between
    # words (0.12 to 0.34 s) and a Finalize 0.2 s into each end-of-turn silence, as AVA sends.
    shapes = [
        [speech(0.6), silence(0.06), speech(0.6)],
        [speech(0.3), silence(0.12), speech(0.3), silence(0.16), speech(0.5)],
        [speech(0.34), silence(0.34), speech(1.0), silence(0.04), speech(0.04)],
    ]
    seconds = [spoken_seconds(b"".join(shape)) for shape in shapes]
    config = DeepgramFakeConfig(
        api_key=KEY,
        script=LINES,
        final_delay=0.02,
        script_per_connection=True,
        utterance_gap=0.5,
        script_seconds=seconds,
    )
    call = Call()
    for _ in range(3):
        for shape in shapes:
            call.say(*shape)
    messages = await transcribe(config, call)
    grouped = finals_by_utterance(messages, call)
    assert [" ".join(texts) for texts in grouped] == LINES * 3
    # A dip inside a word is no pause: the first line, said with only a 60 ms dip, is one final.
    assert [len(texts) for texts in grouped[::3]] == [1, 1, 1]
    # The protocol is unchanged: interims while speaking, each utterance's last final ends it
    # (speech_final, or from_finalize answering AVA's request), empty finals in the silences.
    results = [m for m in messages if m.get("type") == "Results"]
    interims = [m for m in results if not m["is_final"]]
    assert interims and all(text(m) for m in interims)
    for start, end in call.spans:
        last = [
            m
            for m in results
            if m["is_final"] and text(m) and start - 0.05 <= m["start"] <= end + 0.05
        ][-1]
        assert last["speech_final"] or last["from_finalize"]
    assert any(m["is_final"] and not text(m) for m in results)
