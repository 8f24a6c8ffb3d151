"""The wire features the benchmark needs from the fakes: what pipecat's services send (linear16
to Deepgram, `pcm_8000` and `auto_mode` to ElevenLabs) and a script per concurrent call."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.server import serve, ws_url
from benchmarks.providers import spoken_seconds
from media.g711 import pcm16_to_ulaw

pytestmark = pytest.mark.timeout(30)

KEY = "k"
SCRIPT = ["one two three four", "five six"]


def pcm_speech(seconds: float) -> bytes:
    """A steady voiced tone: the fake's energy detector hears it as one unbroken segment."""
    t = np.arange(int(seconds * 8000)) / 8000
    return (0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


def pcm_silence(seconds: float) -> bytes:
    return bytes(int(seconds * 8000) * 2)


async def finals(url: str, audio: bytes, *, encoding: str = "linear16") -> list[str]:
    """Send `audio` in 20 ms frames (faster than real time), then CloseStream; the finals."""
    params = f"encoding={encoding}&sample_rate=8000&endpointing=10"
    frame = 320 if encoding == "linear16" else 160
    texts: list[str] = []
    headers = {"Authorization": f"Token {KEY}"}
    async with websockets.connect(f"{url}/v1/listen?{params}", additional_headers=headers) as ws:
        for i in range(0, len(audio), frame):
            await ws.send(audio[i : i + frame])
        await asyncio.sleep(0.3)  # the fake's final_delay is wall-clock
        await ws.send(json.dumps({"type": "CloseStream"}))
        async for message in ws:
            data: dict[str, Any] = json.loads(message)
            if data.get("type") == "Results" and data["is_final"]:
                text = data["channel"]["alternatives"][0]["transcript"]
                if text:
                    texts.append(text)
    return texts


async def test_deepgram_fake_takes_linear16_and_gives_each_connection_the_script() -> None:
    config = DeepgramFakeConfig(
        api_key=KEY, script=SCRIPT, final_delay=0.05, script_per_connection=True
    )
    fake = DeepgramFake(config)
    async with serve(fake.app) as base:
        one = pcm_speech(0.5) + pcm_silence(0.6) + pcm_speech(0.4) + pcm_silence(0.6)
        first = await finals(ws_url(base), one)
        second = await finals(ws_url(base), pcm_speech(0.5) + pcm_silence(0.6))
    assert first == SCRIPT
    assert second == SCRIPT[:1]  # a new call starts the script again
    assert fake.connections[0].params["encoding"] == "linear16"


async def test_a_pause_inside_an_utterance_splits_its_words_not_the_script() -> None:
    # 0.6 s of speech, a 0.3 s pause, 0.6 s more: one utterance of 1.5 s said in two segments
    said = pcm_speech(0.6) + pcm_silence(0.3) + pcm_speech(0.6)
    seconds = spoken_seconds(pcm16_to_ulaw(said))
    assert seconds == pytest.approx(1.5, abs=0.05)
    config = DeepgramFakeConfig(
        api_key=KEY,
        script=SCRIPT,
        final_delay=0.05,
        script_per_connection=True,
        utterance_gap=0.5,
        script_seconds=[seconds, 0.4],
    )
    async with serve(DeepgramFake(config).app) as base:
        texts = await finals(ws_url(base), said + pcm_silence(0.8) + pcm_speech(0.4))
    # 0.6 of 1.5 s spoken at the pause: 2 of 4 words; the rest at the end; then line two
    assert texts == ["one two", "three four", "five six"]


async def test_elevenlabs_fake_speaks_pcm_and_generates_at_once_in_auto_mode() -> None:
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY, first_byte_latency=0.01))
    async with serve(fake.app) as base:
        url = (
            f"{ws_url(base)}/v1/text-to-speech/v/multi-stream-input"
            "?model_id=m&output_format=pcm_8000&auto_mode=true"
        )
        audio = b""
        async with websockets.connect(url, additional_headers={"xi-api-key": KEY}) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "c1"}))  # pipecat's init
            await ws.send(json.dumps({"text": "Hello there. ", "context_id": "c1"}))  # no flush
            await ws.send(json.dumps({"context_id": "c1", "close_context": True}))
            async for message in ws:
                data = json.loads(message)
                if data.get("audio"):
                    audio += base64.b64decode(data["audio"])
                if data.get("isFinal"):
                    break
    # s16le at 8 kHz: two bytes per sample, seconds_per_char of audio per character
    assert len(audio) == pytest.approx(len("Hello there. ") * 0.06 * 8000 * 2, rel=0.02)
    assert fake.query[0]["output_format"] == "pcm_8000"
    assert fake.contexts[0].spoken.strip() == "Hello there."


async def test_elevenlabs_fake_refuses_a_format_it_cannot_make() -> None:
    fake = ElevenLabsFake(ElevenLabsFakeConfig(api_key=KEY))
    async with serve(fake.app) as base:
        url = f"{ws_url(base)}/v1/text-to-speech/v/multi-stream-input?model_id=m&output_format=mp3"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers={"xi-api-key": KEY}):
                pass
    assert refused.value.response.status_code == 400
