"""The benchmark fakes behave like the services on the points turn-taking depends on: the LLM
answers like an assistant (first clauses of 8+ words, sub-word tokens, set latency and rate),
Deepgram's interims come no faster than every 250 ms of speech, its words appear as they are
spoken, its endpointing final for an unfinished phrase arrives during a pause, and silence gets
empty results."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import websockets

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.openai import (
    SUPPORT_REPLIES,
    OpenAiFake,
    OpenAiFakeConfig,
    first_clause,
    subword_pieces,
    support_desk_reply,
)
from benchmarks.fakes.server import serve, speech_like_ulaw, ws_url
from media.g711 import ulaw_silence

pytestmark = pytest.mark.timeout(30)

KEY = "k"


def test_every_support_reply_opens_with_a_clause_of_eight_words_or_more() -> None:
    for reply in SUPPORT_REPLIES:
        assert len(first_clause(reply).split()) >= 8, reply
        assert len(reply) >= 110  # ~6.5 s of the TTS fake's audio: room for a barge-in
    assert first_clause("Sure, I can help you with that order right away. Then more.") == (
        "Sure, I can help you with that order right away."
    )
    answers = {support_desk_reply([{"role": "user", "content": f"q{i}"}]) for i in range(40)}
    assert len(answers) > 4  # varied, not one canned line
    assert support_desk_reply([{"role": "user", "content": "x"}]) == support_desk_reply(
        [{"role": "user", "content": "x"}]
    )


def test_subword_pieces_rebuild_the_text_in_more_pieces_than_words() -> None:
    text = "Of course I can move that appointment for you today."
    pieces = subword_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) > len(text.split())  # "appointment" and "." are pieces of their own
    assert " can" in pieces and "." in pieces
    assert all(len(p) <= 8 for p in pieces)


async def test_the_llm_fake_streams_sub_words_at_its_latency_and_rate() -> None:
    reply = SUPPORT_REPLIES[1]
    config = OpenAiFakeConfig(
        api_key=KEY,
        reply=lambda _: reply,
        first_token_latency=0.2,
        tokens_per_second=100.0,
        tokens="subwords",
    )
    fake = OpenAiFake(config)
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with serve(fake.app) as base, httpx.AsyncClient() as http:
        started = time.monotonic()
        arrivals: list[tuple[float, str]] = []
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"{base}/v1/chat/completions"
        async with http.stream("POST", url, json=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        arrivals.append((time.monotonic() - started, delta["content"]))
    assert "".join(c for _, c in arrivals) == reply
    assert [c for _, c in arrivals] == subword_pieces(reply)
    assert arrivals[0][0] >= 0.2
    # 1 / 100 s between tokens after the first
    assert arrivals[-1][0] - arrivals[0][0] >= (len(arrivals) - 1) / 100 * 0.9
    assert fake.replies == [reply] and len(fake.chat_request_times) == 1


async def listen(url: str, audio: bytes, params: str) -> list[tuple[float, dict[str, Any]]]:
    """Send `audio` at 4× real time; every Results message with the audio second it came at."""
    got: list[tuple[float, dict[str, Any]]] = []
    sent = [0.0]
    headers = {"Authorization": f"Token {KEY}"}
    async with websockets.connect(f"{url}/v1/listen?{params}", additional_headers=headers) as ws:

        async def receive() -> None:
            async for message in ws:
                data = json.loads(message)
                if data.get("type") == "Results":
                    got.append((sent[0], data))

        reader = asyncio.create_task(receive())
        for i in range(0, len(audio), 160):
            await ws.send(audio[i : i + 160])
            sent[0] = (i + 160) / 8000
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        await ws.send(json.dumps({"type": "CloseStream"}))
        await reader
    return got


def text(result: dict[str, Any]) -> str:
    return str(result["channel"]["alternatives"][0]["transcript"])


async def test_deepgram_reveals_words_as_spoken_and_endpoints_inside_a_pause() -> None:
    # "one two three" (0.6 s), a 0.5 s pause, "four five" (0.4 s), then 1.5 s of silence
    audio = speech_like_ulaw(0.6) + ulaw_silence(4000) + speech_like_ulaw(0.4)
    audio += ulaw_silence(12000)
    config = DeepgramFakeConfig(
        api_key=KEY,
        script=["one two three four five"],
        final_delay=0.02,
        script_per_connection=True,
        utterance_gap=1.0,
        script_word_times=[[0.1, 0.3, 0.5, 0.7, 0.9]],
    )
    async with serve(DeepgramFake(config).app) as base:
        params = "encoding=mulaw&sample_rate=8000&interim_results=true&endpointing=300"
        results = await listen(ws_url(base), audio, params)
    interims = [r for _, r in results if not r["is_final"]]
    finals = [(at, r) for at, r in results if r["is_final"] and text(r)]
    # the interims grow word by word as the audio goes on
    assert [text(r) for r in interims][:2] == ["one", "one two"]
    # interims are ≥ 250 ms of speech apart (their `duration` is the speech so far)
    spans = [(r["start"], r["duration"]) for r in interims]
    for (s1, d1), (s2, d2) in zip(spans, spans[1:], strict=False):
        if s1 == s2:
            assert d2 - d1 >= 0.25 - 1e-6
    # the endpointing final of the unfinished phrase comes during the pause: 0.3 s of silence
    (first_at, first), (_, second) = finals
    assert text(first) == "one two three" and first["speech_final"]
    assert 0.6 + 0.3 <= first_at < 1.1  # before "four" was said
    assert text(second) == "four five"
    # silence gets empty finals (about one a second), as Deepgram sends them
    empty = [at for at, r in results if r["is_final"] and not text(r)]
    assert empty and min(empty) > 1.5
